// Fused recurrent KDA (spec §2.2 steps 4-7, §2.3): one block per (sequence, head); thread j
// keeps column j of the head's fp32 [d_k, d_v] state in registers across the sequence's tokens.
// kda_decode_step.cu does one decode token with the convs and the gated RMSNorm around it.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kda_head_dims.cuh"
#include "kernels/cuda/kda_input_checks.h"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int KdaThreads(int d) { return (d + 31) / 32 * 32; }

// Shared-memory float4 load that the compiler keeps in program order (not hoisted).
__device__ __forceinline__ float4 LoadSharedOrdered4(const float* p) {
  float4 v;
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ld.volatile.shared.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(address)
               : "memory");
  return v;
}

// Raw inputs of one token for thread j (zero for threads past head_dim).
struct TokenInputs {
  float q = 0, k = 0, v = 0, f = 0, beta_logit = 0;
};

template <int D>
__device__ __forceinline__ TokenInputs LoadToken(const KdaInputs& in, int64_t t, int64_t c, int h,
                                                 bool active) {
  TokenInputs x;
  if (active) {
    x.q = LoadAt(in.q, t, c);
    x.k = LoadAt(in.k, t, c);
    x.v = LoadAt(in.v, t, c);
    x.f = LoadAt(in.gate_logits, t, c);
  }
  x.beta_logit = RowF32(in.beta_logits, t)[h];
  return x;
}

// What a block keeps in shared memory for its head's token updates.
template <int D>
struct TokenShared {
  static constexpr int kWarps = KdaThreads(D) / 32;
  __align__(16) float q[D];
  __align__(16) float k[D];
  __align__(16) float decay[D];
  float red[2][kWarps];
};

// One token of the delta rule for thread j's state column s (spec §2.2 steps 4-7, §2.3): q/k L2
// norm over the head, gate and beta, S ← Diag(exp(g)) S + k̂ ⊗ β(v - Sᵀk̂); returns o[j] =
// (Sᵀq̂)[j]. Every thread of the block calls it; two barriers (the norm reduction, then the
// shared q̂/k̂/decay), the first also ordering this token's writes after the last one's reads.
template <int D>
__device__ __forceinline__ float StepToken(float (&s)[D], const TokenInputs& cur, float decay_rate,
                                           float bias, TokenShared<D>& sh) {
  const int j = threadIdx.x, lane = j & 31, warp = j >> 5;
  const bool active = j < D;
  const float sq = WarpSum(cur.q * cur.q), sk = WarpSum(cur.k * cur.k);
  if (lane == 0) {
    sh.red[0][warp] = sq;
    sh.red[1][warp] = sk;
  }
  __syncthreads();
  float sum_q = 0.0f, sum_k = 0.0f;
#pragma unroll
  for (int w = 0; w < TokenShared<D>::kWarps; ++w) {
    sum_q += sh.red[0][w];
    sum_k += sh.red[1][w];
  }
  if (active) {
    const float q_norm = sqrtf(sum_q + 1e-6f), k_norm = sqrtf(sum_k + 1e-6f);
    sh.q[j] = cur.q / q_norm * (1.0f / sqrtf(static_cast<float>(D)));
    sh.k[j] = cur.k / k_norm;
    sh.decay[j] = expf(-decay_rate * SoftplusF(cur.f + bias));
  }
  const float beta = SigmoidF(cur.beta_logit);
  __syncthreads();  // also: every thread is done reading this token's sh.red
  if (!active) return 0.0f;
  const float4* k4 = reinterpret_cast<const float4*>(sh.k);
  const float4* a4 = reinterpret_cast<const float4*>(sh.decay);
  // S ← Diag(exp(g)) S, then the prediction (Sᵀk̂)[j] from the decayed state.
  float m0 = 0.0f, m1 = 0.0f, m2 = 0.0f, m3 = 0.0f;
#pragma unroll
  for (int i = 0; i < D; i += 4) {
    const float4 a = a4[i / 4], k = k4[i / 4];
    s[i] *= a.x;
    s[i + 1] *= a.y;
    s[i + 2] *= a.z;
    s[i + 3] *= a.w;
    m0 = fmaf(s[i], k.x, m0);
    m1 = fmaf(s[i + 1], k.y, m1);
    m2 = fmaf(s[i + 2], k.z, m2);
    m3 = fmaf(s[i + 3], k.w, m3);
  }
  const float delta = beta * (cur.v - ((m0 + m1) + (m2 + m3)));
  // S += k̂ ⊗ delta, then o[j] = (Sᵀq̂)[j] (the read includes this token).
  float o0 = 0.0f, o1 = 0.0f, o2 = 0.0f, o3 = 0.0f;
#pragma unroll
  for (int i = 0; i < D; i += 4) {
    const float4 k = LoadSharedOrdered4(sh.k + i), q = LoadSharedOrdered4(sh.q + i);
    s[i] = fmaf(k.x, delta, s[i]);
    s[i + 1] = fmaf(k.y, delta, s[i + 1]);
    s[i + 2] = fmaf(k.z, delta, s[i + 2]);
    s[i + 3] = fmaf(k.w, delta, s[i + 3]);
    o0 = fmaf(s[i], q.x, o0);
    o1 = fmaf(s[i + 1], q.y, o1);
    o2 = fmaf(s[i + 2], q.z, o2);
    o3 = fmaf(s[i + 3], q.w, o3);
  }
  return (o0 + o1) + (o2 + o3);
}

// Grid: num_seqs * num_heads blocks (block b: sequence b / H, head b % H); block: D rounded up
// to a warp; thread j keeps column j of the head's fp32 [d_k, d_v] state in registers.
template <int D>
__global__ void __launch_bounds__(KdaThreads(D))
    KdaRecurrentKernel(KdaInputs in, const KdaSequence* seqs, TensorView out) {
  static_assert(D % 4 == 0, "the state loops read q̂, k̂ and the decay as float4");
  __shared__ TokenShared<D> sh;
  const int heads = static_cast<int>(in.num_heads);
  const int64_t seq_index = blockIdx.x / heads;
  const int h = static_cast<int>(blockIdx.x % heads);
  const SequenceRows rows = seqs[seq_index].rows;
  if (rows.length <= 0) return;  // uniform over the block
  float* state = seqs[seq_index].state + static_cast<int64_t>(h) * D * D;

  const int j = threadIdx.x;
  const bool active = j < D;
  const int64_t c = static_cast<int64_t>(h) * D + j;
  const float decay_rate = expf(LoadFlat(in.a_log, h));
  const float bias = active ? LoadFlat(in.dt_bias, c) : 0.0f;

  float s[D];  // column j of the state: s[i] = S[i][j]
#pragma unroll
  for (int i = 0; i < D; ++i) s[i] = active ? state[i * D + j] : 0.0f;

  TokenInputs next = LoadToken<D>(in, rows.begin, c, h, active);
  for (int64_t n = 0; n < rows.length; ++n) {
    const int64_t t = rows.begin + n;
    const TokenInputs cur = next;
    if (n + 1 < rows.length) next = LoadToken<D>(in, t + 1, c, h, active);  // prefetch
    const float o = StepToken<D>(s, cur, decay_rate, bias, sh);
    if (active) StoreAt(out, t, c, o);
  }

  if (active) {
#pragma unroll
    for (int i = 0; i < D; ++i) state[i * D + j] = s[i];
  }
}

}  // namespace

bool KdaRecurrentSupports(int64_t head_dim) {
  return WithKdaHeadDim(head_dim, [](auto) {});
}

int LaunchKdaRecurrent(const KdaInputs& in, const KdaSequence* seqs, int64_t num_seqs,
                       TensorView out, Stream stream) {
  const int64_t heads = in.num_heads, d = in.head_dim, t = in.q.rows;
  if (num_seqs < 0 || heads <= 0 || d <= 0 || !KdaInputsMatch(in, out, /*bf16_activations=*/true)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (num_seqs == 0 || t == 0) return 0;
  if (seqs == nullptr || !FitsGridX(num_seqs * heads)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t blocks = num_seqs * heads;
  auto s = static_cast<cudaStream_t>(stream);
  const bool launched = WithKdaHeadDim(d, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    KdaRecurrentKernel<D><<<static_cast<unsigned>(blocks), KdaThreads(D), 0, s>>>(in, seqs, out);
  });
  return launched ? static_cast<int>(cudaGetLastError()) : static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace deltaserve::kernels::cuda
