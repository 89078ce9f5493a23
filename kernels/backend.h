// The compute interface the model is written against. One implementation per device kind
// (kernels/cpu, kernels/cuda); the model code above it does not know which one runs.
//
// Conventions for every operation:
// - Activations are packed over the sequences of a batch: row t of a [T, n] view is token t.
// - Views refer to this backend's memory (see Allocate, AdoptWeight, Upload).
// - Weights use the checkpoint's PyTorch layout [out_features, in_features] and may be F32, BF16
//   or F16; activations and states are F32. Computation is fp32 unless a backend documents otherwise.
// - Shapes are preconditions checked by the caller (the model validates input); a backend only
//   asserts them. Operations run in issue order; results are visible after the call returns.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace deltaserve::kernels {

// Why a backend's operations stopped (Backend::TakeFailure); no message means no failure.
struct BackendFailure {
  bool out_of_memory = false;
  std::string message;
  bool failed() const { return !message.empty(); }
};

// What a backend's memory books hold now (Backend::memory_use), where it keeps them (`known`).
struct MemoryUse {
  bool known = false;
  int64_t state_bytes = 0;      // sequences' states: KDA states, latent pages
  int64_t step_bytes = 0;       // the steps' buffers held now
  int64_t step_room_bytes = 0;  // the most the steps' buffers have needed at once: states leave it
  int64_t limit_bytes = 0;      // the memory limit; 0: none
  int64_t counted_bytes = 0;    // held against the limit (CUDA: weights too); 0 without one
};

// The shape of a step that a backend may record once and replay (CUDA graphs): steps with equal
// keys issue the same operations on the same shapes and weights, only the uploaded host data
// (token ids, sequence descriptors) differs.
struct StepGraphKey {
  uint64_t caller = 0;     // who issues the step (a model instance): callers never share recordings
  int64_t tokens = 0;      // rows of the packed batch
  int64_t sequences = 0;
  int64_t logit_rows = 0;  // rows whose logits the step computes
  int64_t argmax_rows = 0; // of them, rows whose argmax it returns instead (ArgmaxRows)
  int64_t drawn_rows = 0;  // and rows whose drawn token it returns (SampleRows)
  int64_t max_keys = 0;    // the longest sequence's history after the step (MLA keys)
  int64_t penalties = 0;   // entries of the step's ApplyPenalties
  // The device address a later pipeline stage copies its input rows from (0: uploaded from the
  // host); recordings copy from it, so each address has its own (a stage whose steps come now
  // over an NCCL link, now as bytes, keeps a recording for each).
  uintptr_t hidden_source = 0;
  bool operator==(const StepGraphKey&) const = default;
};

// What Backend::PrepareProductInput returns: x, and where the backend made one, its copy rounded
// to a half-precision weight type, to keep while the products run.
struct ProductInput {
  TensorView x;
  Tensor rounded;  // empty where the products read x as it is
  // What a product with weight w takes: the rounded copy where it is of w's type, else x.
  TensorView For(TensorView w) const { return !rounded.empty() && rounded.dtype() == w.dtype ? rounded.view() : x; }
};

// A step being recorded or replayed (Backend::BeginStepGraph). Until Launch, the calling thread's
// operations may be deferred: their results are not readable (no Download) and the caller must
// issue every operation of the step, exactly as it would without a graph. Views the caller passes
// must be this step's allocations or weights; per-sequence memory travels in descriptors (ops.h).
// The step's allocations stay readable until the StepGraph is destroyed.
class StepGraph {
 public:
  virtual ~StepGraph() = default;
  // Runs the operations issued since BeginStepGraph. False when they could not be recorded or
  // replayed; then none of them ran, and the caller issues them again without a graph.
  virtual bool Launch() = 0;
};

// The CUDA backend's default window of the expanded MLA form (CudaBackendOptions::
// mla_expanded_window_keys): ~1.1 GB of step buffers at the 48B shape on an H100/H200. Measured
// there: 0.7% slower than whole histories at 1M keys (3% with windows of 32,768).
inline constexpr int64_t kMlaExpandedWindowKeysDefault = 65536;

// Where the MLA forms trade places on a backend (Backend::MlaForms), for the model's choice of
// form (docs/engine.md, "Choosing algorithms").
struct MlaFormLimits {
  // A sequence with at most this many new tokens attends faster in the absorbed form, which reads
  // the latent history once per new token, than in the expanded one, which rebuilds every key and
  // value of the history whatever the new tokens. The CPU backend's break-even: ~130 at 4k keys.
  int64_t absorbed_max_new_tokens = 128;
  // The most keys of one sequence the expanded form holds expanded at once (a longer history
  // window by window, its buffers bounded whatever its length; the CUDA backend's windows:
  // kMlaExpandedWindowKeysDefault unless configured); 0: the whole history at once, buffers in
  // proportion to it.
  int64_t expanded_window_keys = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // The calling thread's first failure since its last call, then forgotten. A backend whose
  // device can refuse work (CUDA: memory exhausted, a launch rejected) records a thread's first
  // failure, and that thread's operations then do nothing and allocate nothing (views with null
  // data) until it takes the failure: a caller checks once after a step instead of after every
  // call. Device faults that leave the device unusable still end the process. The CPU backend
  // fails only for memory (its limit, or host memory exhausted).
  virtual BackendFailure TakeFailure() { return {}; }
  // The memory its books hold now (monitoring); unknown for a backend that keeps none.
  virtual MemoryUse memory_use() const { return {}; }

  // Starts recording or replaying a step of this shape on the calling thread; null when the
  // backend has no graphs (the CPU backend) or will not use one now (another thread holds one,
  // the shape failed before). The caller then issues the step and calls Launch.
  virtual std::unique_ptr<StepGraph> BeginStepGraph(const StepGraphKey& key) {
    (void)key;
    return nullptr;
  }

  // Memory. Allocated contents are unspecified.
  virtual Tensor Allocate(int64_t rows, int64_t cols, DType dtype) = 0;
  // Memory a sequence keeps from step to step (its states and latent pages). With
  // leave_step_room a backend may refuse it as out of memory where it would leave less room than
  // the steps' own buffers have needed at once (CUDA; CPU under a memory limit), so that growing
  // states run out before a step that changes them does; without it (a sequence alone, nothing
  // to give memory back), it may take that room.
  virtual Tensor AllocateState(int64_t rows, int64_t cols, DType dtype, bool leave_step_room = true) {
    (void)leave_step_room;
    return Allocate(rows, cols, dtype);
  }
  virtual void Free(void* data) = 0;
  virtual void Zero(TensorView dst) = 0;
  // Host buffers are contiguous [rows, cols] of the view's dtype. The host buffer of an Upload
  // may be reused or freed as soon as the call returns.
  virtual void Upload(const void* host, TensorView dst) = 0;
  virtual void Download(TensorView src, void* host) = 0;
  virtual void Copy(TensorView src, TensorView dst) = 0;
  // Returns once the calling thread's operations so far have finished on the device (for memory
  // another stream reads next, as an NCCL link's buffer). Backends that finish every operation
  // before it returns need not override it.
  virtual void Synchronize() {}
  // dst row i = src row rows[i].
  virtual void GatherRows(TensorView src, std::span<const int64_t> rows, TensorView dst) = 0;

  // Makes a host weight (for example memory-mapped from a checkpoint) usable by this backend.
  // The returned view stays valid while the backend lives; the host memory must too on the CPU
  // backend, which uses it in place.
  virtual TensorView AdoptWeight(TensorView host_weight) = 0;
  // The same for a weight whose products must be fp32 whatever precision the backend uses
  // elsewhere (the MoE router: its top-k choice is discrete, and the reference computes it in
  // fp32). The CPU backend is fp32 throughout and adopts it as any other.
  virtual TensorView AdoptWeightF32(TensorView host_weight) { return AdoptWeight(host_weight); }

  // out[t] = table[ids[t]].
  virtual void Embed(std::span<const int32_t> ids, TensorView table, TensorView out) = 0;
  // y = x · wᵀ for x [T, K] and w [N, K]; y [T, N]. x is F32, or ProductInput::For(w).
  virtual void MatMul(TensorView x, TensorView w, TensorView y) = 0;
  // The dtype in which this backend's products with weight w read an x of `rows` rows: F32, or
  // where it rounds x first, w's half-precision type (the CUDA backend past
  // skinny_matmul_max_rows rows, where every product goes through cuBLAS). MatMul and MatMuls
  // take x in that dtype too; a norm that writes only products' input may write it (RmsNorm,
  // AddRmsNorm, GatedRmsNorm), which gives the products the same bits.
  virtual DType ProductInputDType(int64_t /*rows*/, TensorView /*w*/) const { return DType::kF32; }
  // x in ProductInputDType, made once for several products of an fp32 x to share (an FFN's gate
  // and up, whose x the router also reads in fp32). MatMul and MatMuls take ProductInput::For(w)
  // in place of x. This definition returns x itself (for ProductInputDType's F32); a backend that rounds
  // defines both.
  virtual ProductInput PrepareProductInput(TensorView x, TensorView w);
  // MatMul for each product; no product's y may be another's x or overlap another's y. This
  // definition runs them one by one; a backend may run them together (one launch for a layer's
  // projections of the same input), each product computed as MatMul would up to the order of
  // its sums.
  virtual void MatMuls(std::span<const MatMulProduct> products);
  // acc += x.
  virtual void Add(TensorView acc, TensorView x) = 0;
  // out = w ⊙ x · rsqrt(mean(x²) + eps), per row. out F32, or BF16 where ProductInputDType is
  // BF16 for the products it feeds (as for AddRmsNorm's and GatedRmsNorm's).
  virtual void RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) = 0;
  // acc += x, then out = RmsNorm(acc) (a residual add and the next norm). This definition calls
  // Add and RmsNorm; a backend may fuse them with the same results.
  virtual void AddRmsNorm(TensorView acc, TensorView x, TensorView weight, float eps, TensorView out);
  // out = silu(gate) ⊙ up.
  virtual void SwiGlu(TensorView gate, TensorView up, TensorView out) = 0;

  // out = silu(depthwise causal conv(x)) with weight [channels, kernel] (the checkpoint's
  // [C, 1, W]); weight column W-1 multiplies the current token. out must not overlap x.
  virtual void CausalConvSilu(TensorView x, TensorView weight, std::span<const ConvSequence> seqs,
                              TensorView out) = 0;
  // The dtype the model keeps the KDA core's prefill activations in: CausalConvSilu's out, the
  // forget and output gates' logits (their MatMul's y), KdaAttention's q, k, v, gate logits and
  // out, GatedRmsNorm's x and gate. Those operations take F32 on every backend, and this dtype
  // too where a backend returns another (the CUDA backend: BF16, as FLA's chunk_kda reads them;
  // its MatMul then writes bf16 from any weight dtype).
  virtual DType KdaActivationDType() const { return DType::kF32; }
  // Gate, beta, q/k L2 norm and the delta rule; out [T, H*d] is the per-head read o_t.
  virtual void KdaAttention(const KdaInputs& in, std::span<const KdaSequence> seqs,
                            TensorView out) = 0;
  // out = rmsnorm(x per head of head_dim) ⊙ weight ⊙ sigmoid(gate)  (spec §2.2 step 9); out F32,
  // or BF16 where ProductInputDType is BF16 for the product it feeds.
  virtual void GatedRmsNorm(TensorView x, TensorView gate, TensorView weight, int64_t head_dim,
                            float eps, TensorView out) = 0;
  // A decode step of the KDA core, every sequence one token (row): the q/k/v short convs with
  // SiLU (tails advanced), the recurrent delta rule as KdaAttention (states updated), then the
  // gated RMSNorm of the read: out [T, H*d] = GatedRmsNorm(o, out_gate, out_norm). This
  // definition composes the operations above (the reference); a backend may fuse them.
  virtual void KdaDecodeStep(const KdaDecodeInputs& in, std::span<const KdaDecodeSequence> seqs,
                             TensorView out);

  // The dtype of the MLA latent caches' pages this backend keeps (LatentPages): F32, or BF16 (the
  // CUDA backend at serving precision, whose tensor-core kernels round keys and values to bf16
  // anyway: half the memory and half the reads). MlaAttention takes pages of this dtype.
  virtual DType LatentCacheDType() const { return DType::kF32; }
  // Appends `latent` [T, R + dr] to each sequence's cache, then attends with q [T, H*(dn+dr)]
  // over the cache (causally); out [T, H*dv]. kv_b is the checkpoint's [H*(dn+dv), R].
  virtual void MlaAttention(const MlaParams& params, TensorView q, TensorView latent,
                            TensorView kv_b, std::span<const MlaSequence> seqs,
                            TensorView out) = 0;
  // Where the MLA forms trade places here, for the model's choice of form.
  virtual MlaFormLimits MlaForms(const MlaParams& /*params*/) const { return {}; }

  // Sigmoid scores plus correction bias pick top_k experts per token (optionally within the
  // best groups); expert_ids [T, k] I32 come sorted ascending, weights [T, k] F32.
  virtual void MoeRoute(TensorView router_logits, TensorView correction_bias,
                        const MoeRouting& routing, TensorView expert_ids, TensorView weights) = 0;
  // For every (token t, slot s) whose expert e = expert_ids[t, s] lies in
  // [first_expert, first_expert + experts.size()): slot_out[t*k + s] = expert_e(x[t]).
  // Other rows of slot_out are left alone. slot_out is F32, or MoeSlotDType where that is BF16.
  virtual void MoeExperts(TensorView x, TensorView expert_ids,
                          std::span<const ExpertWeights> experts, int64_t first_expert,
                          TensorView slot_out) = 0;
  // The dtype MoeExperts writes the slot rows of x's tokens (top_k slots each) for these experts
  // in most cheaply, and the one MoeFfn's composition keeps them in: F32, or BF16 where the
  // backend writes each expert's output rounded to bf16 (as the reference's bf16 experts return
  // it) at half the bytes: the CUDA backend's 128-row expert tiles. This definition: F32.
  virtual DType MoeSlotDType(TensorView /*x*/, int64_t /*top_k*/, std::span<const ExpertWeights> /*experts*/) {
    return DType::kF32;
  }
  // out[t] += Σ_s weights[t, s] · slot_out[t*k + s], summed in slot order; slot_out F32 or BF16.
  virtual void MoeCombine(TensorView slot_out, TensorView weights, TensorView out) = 0;
  // A whole MoE FFN whose experts are all held here (experts[e] is expert e): router logits
  // x · routerᵀ, MoeRoute, then out[t] = shared(x[t]) (zero where shared is null) +
  // Σ_s weights[t, s] · expert_{ids[t, s]}(x[t]), summed in slot order after the shared expert.
  // This definition composes the operations above (the router and the shared expert's gate and
  // up products as one MatMuls); a backend may fuse them.
  virtual void MoeFfn(TensorView x, TensorView router, TensorView correction_bias, const MoeRouting& routing,
                      std::span<const ExpertWeights> experts, const ExpertWeights* shared, TensorView out);

  // Greedy sampling: ids [rows, 1] I32, ids[r] = the index of the largest value of x's row r,
  // the lowest index on ties; -1 for a row a sampler rejects (a NaN or +inf, or only -inf).
  // This definition downloads x and scans it on the host; a device backend keeps it there.
  virtual void ArgmaxRows(TensorView x, TensorView ids);
  // Sampling: ids [rows, 1] I32, ids[r] = the token kernels::SampleRow draws from x's row r with
  // draws[r] (-1 for a row it rejects). This definition downloads x and draws on the host; a
  // device backend keeps the logits there.
  virtual void SampleRows(TensorView x, std::span<const RowSampling> draws, TensorView ids);
  // Sampling penalties: x[p.row, p.token] = PenalizedLogit(that logit, p) for each penalty p
  // (kernels/sampling.h) whose token is >= 0; at most one penalty per logit; rows and tokens
  // inside x. This definition downloads x and applies them on the host; a device backend keeps
  // the logits there.
  virtual void ApplyPenalties(TensorView x, std::span<const LogitPenalty> penalties);
};

// The first half of an MoE FFN: the router's and the shared expert's gate and up products of x
// (one MatMuls; shared null: the router's alone), then MoeRoute.
struct RoutedMoe {
  Tensor ids, weights;            // [T, k] I32, F32
  Tensor shared_gate, shared_up;  // [T, inner] F32, empty without a shared expert
};
RoutedMoe RouteMoe(Backend& backend, TensorView x, TensorView router, TensorView correction_bias,
                   const MoeRouting& routing, const ExpertWeights* shared);

// The composition Backend::MoeFfn is defined as: RouteMoe, the routed experts' slot outputs
// (slot_out [T*k, D] in slot_dtype, slot t*k + s for ids[t, s]) from run_experts (a backend's
// MoeExperts there, expert workers in the split cluster), the shared expert, MoeCombine. false
// where run_experts returned false (out is then not written).
bool ComposeMoeFfn(Backend& backend, TensorView x, TensorView router, TensorView correction_bias,
                   const MoeRouting& routing, const ExpertWeights* shared, TensorView out,
                   const std::function<bool(TensorView ids, TensorView slot_out)>& run_experts,
                   DType slot_dtype = DType::kF32);

}  // namespace deltaserve::kernels
