// The CUDA backend: weights on the GPU in their stored dtype (BF16 in the release), activations
// and states in F32 device memory (the KDA core's activations outside decode steps in BF16, see
// KdaActivationDType), matrix products through cuBLAS (bf16 inputs, fp32
// accumulation), everything else in our kernels (kernels/cuda/*.cu). One stream; host-visible
// results (Download) synchronise it. Tested against the CPU backend op by op and on the fixtures.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace deltaserve::kernels::cuda {

struct MoeExpertTable;  // launchers.h

// How matrix products with half-precision weights are computed.
enum class MatmulPrecision {
  // Serving: activations rounded to the weight dtype, tensor cores, fp32 accumulation; products
  // of a few rows (decode; skinny_matmul_max_rows) read the weight once and multiply in fp32 on
  // CUDA cores instead.
  kHalf,
  kF32,   // weights widened to fp32 per product, fp32 inputs (validation against the CPU engine)
};

// How MoeExperts computes the experts' products.
enum class MoeExpertsKernel {
  // Grouped by expert on the device, two launches for all experts (no host round trip); falls
  // back to kPerExpert where the grouped kernels do not apply (fp32 validation mode, weights not
  // bf16, dimensions not multiples of 8).
  kGrouped,
  // Expert ids downloaded, rows grouped on the host, cuBLAS products per active expert.
  kPerExpert,
};

struct CudaBackendOptions {
  int device = 0;
  MatmulPrecision matmul_precision = MatmulPrecision::kHalf;
  // Under kHalf, products of at most this many rows (0 to 8) take the skinny kernel, more rows
  // cuBLAS. Measured on an H200 over a 48B decode step's products: the skinny kernel is ahead
  // up to 4 rows and behind at 8 (docs/gpu-benchmark.md).
  int64_t skinny_matmul_max_rows = 4;
  // Products whose weight has more bytes than this take cuBLAS at any row count (0: no limit).
  // Measured on an H200 (docs/gpu-benchmark.md): on the 48B's 755 MB LM head cuBLAS reads the
  // weight at 100% of copy, the skinny kernel at 88% (1 row) to 71% (4 rows); at 42 MB and
  // below the skinny launches are ahead or level.
  int64_t skinny_matmul_max_weight_bytes = int64_t{256} << 20;
  // Skinny products, and the decode MoE kernels' down product, launched as programmatic
  // dependents of the kernel before them: their blocks start, and fetch their weights into L2,
  // while it finishes (decode at small batches is a chain of short kernels). The decode chain's
  // other kernels are always programmatic launches that wait for the kernel before them first
  // thing (LaunchAfterPrior), which this option does not change.
  bool programmatic_products = true;
  MoeExpertsKernel moe_experts = MoeExpertsKernel::kGrouped;
  // Under kGrouped, calls of at most this many (token, expert) slots skip the grouping: warps own
  // output columns of each slot (LaunchMoeDecodeExperts; decode batches of a few sequences,
  // where grouping by expert leaves most of the GPU idle). 0: always group.
  int64_t moe_decode_max_slots = 32;
  // Under kGrouped and kHalf, MoeFfn calls of at most this many routed slots (and at most
  // moe_decode_max_slots) run the experts, the shared expert (as each token's first slot) and
  // the combine in two launches (LaunchMoeDecodeFfn); more, the composition. 0: never. Measured
  // on an H200 at the 48B shape: batch 1 and 2 steps 4.7% and 3.6% faster (8 and 16 slots); on
  // a 4-layer slice level at 4 tokens, where the shared expert's weights, read once per token's
  // slot, cost what the launches saved (docs/gpu-benchmark.md).
  int64_t moe_fused_max_slots = 16;
  // Under kGrouped, calls whose slots average at least this many per local expert take 128-row
  // tiles on Hopper's warpgroup products (sm_90a builds on a compute capability 9.0 GPU), fewer
  // take 16- or 64-row tiles on mma.sync. 0: the wide tiles wherever they run. Measured on an
  // H200 at the 48B shape: the wide tiles are ahead from 40 slots over 256 experts (3%) to 32k
  // tokens (3.1x), docs/gpu-benchmark.md.
  int64_t moe_wide_tiles_min_rows = 0;
  // Under kGrouped, calls of at least this many slots, outside step graphs, take cuBLAS's grouped
  // products instead of our kernels (one host round trip for the experts' row counts). 0: never.
  int64_t moe_cublas_grouped_min_slots = 0;
  // Expanded MLA attention (prefill) on Hopper's warpgroup products where they run (sm_90a builds
  // on a compute capability 9.0 GPU); false: the mma.sync kernel.
  bool mla_expanded_wgmma = true;
  // Absorbed MLA attention (decode) at serving precision on Hopper's warpgroup products where they
  // run (sm_90a builds on a compute capability 9.0 GPU); false, or where they do not run: the
  // CUDA-core kernel (fp32 arithmetic over the bf16 pages).
  bool mla_absorbed_tensor_cores = true;
  // At serving precision on the tensor-core kernels, the expanded MLA form (prefill) expands a
  // sequence's history into per-head keys and values at most this many keys at a time (a multiple
  // of 64; 0: whole histories at once): a longer history is attended window by window, and the
  // windows' results combined by their log-sum-exps. Sequences that fit in a window together
  // share one launch. Step buffers per key at the 48B shape: ~17 KB on the warpgroup kernel (the
  // gathered latent and its product with kv_b, read through tensor maps), ~37 KB on mma.sync
  // (which also needs the per-head key tiles).
  int64_t mla_expanded_window_keys = kMlaExpandedWindowKeysDefault;
  // The most device memory this backend holds at once (weights, states, activations, scratch);
  // 0: what the device has. An allocation past it fails as out of memory (TakeFailure).
  int64_t memory_limit_bytes = 0;
  // Decode steps (Backend::BeginStepGraph) recorded as CUDA graphs and replayed: ~16 graph
  // launches per step instead of ~1,000 kernel launches. At most max_step_graphs shapes keep a
  // graph (and its step arena), and four times as many are remembered.
  bool step_graphs = true;
  int max_step_graphs = 64;
};

// How the steps offered a graph ran (CudaBackend::step_graph_counts).
struct StepGraphCounts {
  int64_t measured = 0;  // ran as usual while their sizes were counted
  int64_t captured = 0;  // recorded, then launched
  int64_t replayed = 0;  // launched from an earlier recording
  int64_t failed = 0;    // could not be recorded or replayed; ran as usual
};

// True when a CUDA device can be used; otherwise `why` says why not. The kernels are built for
// sm_90 (Hopper): Create refuses devices of an older compute capability.
bool CudaDeviceAvailable(std::string* why);

class CudaBackend final : public Backend {
 public:
  // Null (with `error` set) when the device cannot be used.
  static std::unique_ptr<CudaBackend> Create(const CudaBackendOptions& options, std::string* error);
  ~CudaBackend() override;

  std::string_view name() const override { return "cuda"; }
  BackendFailure TakeFailure() override;
  MemoryUse memory_use() const override;
  std::unique_ptr<StepGraph> BeginStepGraph(const StepGraphKey& key) override;
  StepGraphCounts step_graph_counts() const;

  Tensor Allocate(int64_t rows, int64_t cols, DType dtype) override;
  // With leave_step_room, refused (out of memory) where it would leave less free device memory
  // (under the memory limit where one is set) than the steps' buffers have held at once
  // (StepRoom). Step graphs' arenas are held to the same rule (no graph where refused).
  Tensor AllocateState(int64_t rows, int64_t cols, DType dtype, bool leave_step_room = true) override;
  void Free(void* data) override;
  void Zero(TensorView dst) override;
  void Upload(const void* host, TensorView dst) override;
  void Download(TensorView src, void* host) override;
  void Copy(TensorView src, TensorView dst) override;
  void GatherRows(TensorView src, std::span<const int64_t> rows, TensorView dst) override;
  TensorView AdoptWeight(TensorView host_weight) override;
  // Stored widened to F32 on the device, so its products run in fp32 (cublasSgemm).
  TensorView AdoptWeightF32(TensorView host_weight) override;

  void Embed(std::span<const int32_t> ids, TensorView table, TensorView out) override;
  void MatMul(TensorView x, TensorView w, TensorView y) override;
  void MatMuls(std::span<const MatMulProduct> products) override;
  DType ProductInputDType(int64_t rows, TensorView w) const override;
  ProductInput PrepareProductInput(TensorView x, TensorView w) override;
  void AddRmsNorm(TensorView acc, TensorView x, TensorView weight, float eps, TensorView out) override;
  void Add(TensorView acc, TensorView x) override;
  void RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) override;
  void SwiGlu(TensorView gate, TensorView up, TensorView out) override;
  void CausalConvSilu(TensorView x, TensorView weight, std::span<const ConvSequence> seqs,
                      TensorView out) override;
  // BF16 in serving precision: the chunked kernels then move half the bytes (their tensor-core
  // operands are bf16 anyway; the inputs' and the read's own rounding is what is new, bounded in
  // the tests). Decode rows in a step that also prefills go through KdaAttention too, so they see
  // the same rounding; a pure decode step (KdaDecodeStep) stays fp32. F32 in the fp32 validation
  // mode.
  DType KdaActivationDType() const override;
  void KdaAttention(const KdaInputs& in, std::span<const KdaSequence> seqs, TensorView out) override;
  void GatedRmsNorm(TensorView x, TensorView gate, TensorView weight, int64_t head_dim, float eps,
                    TensorView out) override;
  // One kernel (kda_recurrent.cu) for the head dims the recurrent kernel takes.
  void KdaDecodeStep(const KdaDecodeInputs& in, std::span<const KdaDecodeSequence> seqs,
                     TensorView out) override;
  // BF16 in serving precision (the tensor-core kernels read bf16 keys and values; the CUDA-core
  // kernel, which other shapes and GPUs other than Hopper take, widens them), F32 in the fp32
  // validation mode.
  DType LatentCacheDType() const override;
  void MlaAttention(const MlaParams& params, TensorView q, TensorView latent, TensorView kv_b,
                    std::span<const MlaSequence> seqs, TensorView out) override;
  // Where the expanded form runs on tensor cores: the absorbed form up to 64 new tokens, windows
  // of CudaBackendOptions::mla_expanded_window_keys.
  MlaFormLimits MlaForms(const MlaParams& params) const override;
  void MoeRoute(TensorView router_logits, TensorView correction_bias, const MoeRouting& routing,
                TensorView expert_ids, TensorView weights) override;
  void MoeExperts(TensorView x, TensorView expert_ids, std::span<const ExpertWeights> experts,
                  int64_t first_expert, TensorView slot_out) override;
  // BF16 where MoeExperts takes the 128-row expert tiles (warpgroup products) for these slots.
  DType MoeSlotDType(TensorView x, int64_t top_k, std::span<const ExpertWeights> experts) override;
  void MoeCombine(TensorView slot_out, TensorView weights, TensorView out) override;
  void MoeFfn(TensorView x, TensorView router, TensorView correction_bias, const MoeRouting& routing,
              std::span<const ExpertWeights> experts, const ExpertWeights* shared, TensorView out) override;
  void ArgmaxRows(TensorView x, TensorView ids) override;
  void SampleRows(TensorView x, std::span<const RowSampling> draws, TensorView ids) override;
  void ApplyPenalties(TensorView x, std::span<const LogitPenalty> penalties) override;

  // Waits for all queued work.
  void Synchronize() override;

 private:
  friend class CudaStepGraph;
  struct Impl;
  explicit CudaBackend(std::unique_ptr<Impl> impl);
  void Bind() const;
  // Allocate, counting the tensor among the steps' buffers unless it is a state's; a state with
  // leave_step_room (outside step graphs) only where MemoryBudget::Admit allows it.
  Tensor AllocateKind(int64_t rows, int64_t cols, DType dtype, bool step_buffer, bool leave_step_room);
  // Device memory of at least `bytes` bytes (scratch), freed with the tensor.
  Tensor AllocateBytes(size_t bytes);
  // A device copy of `bytes` host bytes (descriptor arrays, ids), freed with the tensor.
  Tensor UploadBytes(const void* host, size_t bytes);
  // The device arrays of the experts' weight pointers (`shared` after them where given) the
  // grouped and decode kernels take, uploaded once per list: kNotApplicable (nothing queued)
  // where those kernels do not take the weights, kFailed where the upload failed (the failure is
  // held) or a step graph cannot hold the change (the graph is marked broken; the step runs
  // again without it).
  enum class TableOutcome : uint8_t { kReady, kNotApplicable, kFailed };
  TableOutcome ExpertTable(std::span<const ExpertWeights> experts, int64_t first_expert,
                           const ExpertWeights* shared, int64_t hidden, MoeExpertTable& table);
  // Encodes the wide expert tiles' tensor maps of a table's entries (pointers as ExpertTable lays
  // them out) into `storage` (device memory, allocated on first use) and points `maps` at it;
  // `maps` null where they do not apply. False after a failed upload.
  bool UploadWideTileMaps(const std::vector<const void*>& pointers, size_t entries, int64_t inner, int64_t hidden,
                          void*& storage, const void*& maps);
  // Which kernels the grouped path of MoeExperts gives a call of x's rows in `slots` slots:
  // cuBLAS's grouped products, or the decode kernels (the wide or mma.sync tiles otherwise).
  bool UsesCublasGroupedExperts(int64_t slots) const;
  bool UsesDecodeExperts(TensorView x, int64_t slots) const;
  // The expanded sequences of an MlaAttention call on the tensor-core kernels, their key tiles
  // made mla_expanded_window_keys keys at a time (seqs and device_seqs: the call's descriptors,
  // their pages already appended to).
  void MlaExpandedTensorCores(const MlaParams& params, TensorView q, TensorView kv_b,
                              std::span<const MlaSequence> seqs, const MlaSequence* device_seqs, TensorView out);
  // The grouped-kernel path of MoeExperts; false (nothing queued) where it does not apply.
  bool MoeExpertsGrouped(TensorView x, TensorView expert_ids, std::span<const ExpertWeights> experts,
                         int64_t first_expert, TensorView slot_out);
  std::unique_ptr<Impl> impl_;
};

}  // namespace deltaserve::kernels::cuda
