// Device helpers shared by the kernels: element loads of any stored dtype as float, and warp and
// block sums.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "kernels/tensor.h"

namespace deltaserve::kernels::cuda {

__device__ __forceinline__ float LoadFloat(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(base)[index];
    case DType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    case DType::kF16: return __half2float(static_cast<const __half*>(base)[index]);
    case DType::kI32: return static_cast<float>(static_cast<const int32_t*>(base)[index]);
  }
  return 0.0f;
}

// Element (r, c) of a view, as float.
__device__ __forceinline__ float LoadAt(const TensorView& v, int64_t r, int64_t c) {
  return LoadFloat(v.data, v.dtype, r * v.row_stride + c);
}

// Element (r, c) of an activation view (fp32 or bf16) = value, rounded to the view's dtype.
__device__ __forceinline__ void StoreAt(const TensorView& v, int64_t r, int64_t c, float value) {
  const int64_t index = r * v.row_stride + c;
  if (v.dtype == DType::kBF16) {
    static_cast<__nv_bfloat16*>(v.data)[index] = __float2bfloat16(value);
  } else {
    static_cast<float*>(v.data)[index] = value;
  }
}

// Elements (r, c .. c+7) of a view as floats, zero past its columns: one 16-byte load where the
// dtype is 16-bit and the address aligned, two for fp32, element loads otherwise.
__device__ __forceinline__ void Load8(const TensorView& v, int64_t r, int64_t c, float (&out)[8]) {
  const int64_t index = r * v.row_stride + c;
  const int size = v.dtype == DType::kF32 ? 4 : 2;
  const auto address = reinterpret_cast<uintptr_t>(static_cast<const char*>(v.data) + index * size);
  if (c + 8 <= v.cols && address % 16 == 0 && v.dtype != DType::kI32) {
    if (v.dtype == DType::kF32) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(address));
      const float4 b = __ldg(reinterpret_cast<const float4*>(address) + 1);
      out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
      return;
    }
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(address));
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t pair = (&raw.x)[i];
      float2 f;
      if (v.dtype == DType::kBF16) {
        f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pair));
      } else {
        f = __half22float2(*reinterpret_cast<const __half2*>(&pair));
      }
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = c + i < v.cols ? LoadFloat(v.data, v.dtype, index + i) : 0.0f;
}

// Four bf16 values as one 8-byte word, and back.
__device__ __forceinline__ uint2 PackBf16(float4 a) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(a.x, a.y), hi = __floats2bfloat162_rn(a.z, a.w);
  return make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
}
__device__ __forceinline__ float4 UnpackBf16(uint2 packed) {
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// Elements (r, c .. c+3) of an activation view (fp32 or bf16) as floats, in one 16- or 8-byte
// load; the caller has checked the view with Aligned4 and c is a multiple of 4.
__device__ __forceinline__ float4 Load4(const TensorView& v, int64_t r, int64_t c) {
  const int64_t index = r * v.row_stride + c;
  if (v.dtype == DType::kBF16) {
    return UnpackBf16(*reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(v.data) + index));
  }
  return *reinterpret_cast<const float4*>(static_cast<const float*>(v.data) + index);
}
__device__ __forceinline__ void Load4(const TensorView& v, int64_t r, int64_t c, float (&out)[4]) {
  const float4 q = Load4(v, r, c);
  out[0] = q.x, out[1] = q.y, out[2] = q.z, out[3] = q.w;
}

// Elements (r, c .. c+3) of an activation view = values, rounded to its dtype, in one store; the
// caller has checked the view with Aligned4 and c is a multiple of 4.
__device__ __forceinline__ void Store4(const TensorView& v, int64_t r, int64_t c, const float (&in)[4]) {
  const int64_t index = r * v.row_stride + c;
  const float4 a = make_float4(in[0], in[1], in[2], in[3]);
  if (v.dtype == DType::kBF16) {
    *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(v.data) + index) = PackBf16(a);
  } else {
    *reinterpret_cast<float4*>(static_cast<float*>(v.data) + index) = a;
  }
}

__device__ __forceinline__ float* RowF32(const TensorView& v, int64_t r) {
  return static_cast<float*>(v.data) + r * v.row_stride;
}

__device__ __forceinline__ float WarpSum(float value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float WarpMax(float value) {
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call synchronises the block.
__device__ __forceinline__ float BlockSum(float value, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  value = WarpSum(value);
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  value = lane < warps ? scratch[lane] : 0.0f;
  return WarpSum(value);
}

__device__ __forceinline__ float BlockMax(float value, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  value = WarpMax(value);
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  value = lane < warps ? scratch[lane] : -INFINITY;
  return WarpMax(value);
}

__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float SiluF(float x) { return x * SigmoidF(x); }

// log(1 + e^x), exact to fp32 where e^x no longer changes the sum.
__device__ __forceinline__ float SoftplusF(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// Element i of a view read as a flat vector in row-major order (for weights and biases whose
// checkpoint shape may be [1, n], [n, 1] or [n]).
__device__ __forceinline__ float LoadFlat(const TensorView& v, int64_t i) {
  if (v.rows == 1) return LoadFloat(v.data, v.dtype, i);
  return LoadAt(v, i / v.cols, i % v.cols);
}

// Threads of a block that strides over `cols` elements of a row: a multiple of 32 in
// [32, max_threads] (max_threads itself a multiple of 32).
inline unsigned RowBlockThreads(int64_t cols, unsigned max_threads = 256) {
  const int64_t rounded = (cols + 31) / 32 * 32;
  if (rounded <= 32) return 32;
  return rounded >= max_threads ? max_threads : static_cast<unsigned>(rounded);
}

// Programmatic dependent launch (sm_90). A kernel launched as programmatic (LaunchSkinnyMatMuls)
// may start while the kernel before it in the stream still runs: it must call
// WaitForPriorKernels in every block, before reading what earlier kernels wrote or writing what
// they read (and before returning, so that its completion still implies theirs). Before the wait
// it may read weights, and data that only an upload (a memcpy, which no later launch overtakes)
// or an earlier call wrote, as MlaLatentAttentionKernel does with its settled tiles. A kernel that
// calls AllowDependentLaunch lets such a successor start once all its blocks have started; in
// any other kernel it does nothing.
__device__ __forceinline__ void WaitForPriorKernels() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void AllowDependentLaunch() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// The start of a kernel launched by LaunchAfterPrior: lets the kernel after it be scheduled,
// then waits for the kernels before it. Nothing before this call may touch global memory that
// kernels write.
__device__ __forceinline__ void FollowPriorKernels() {
  AllowDependentLaunch();
  WaitForPriorKernels();
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch where
// `programmatic`: its blocks may be scheduled while the kernel before it finishes, hiding the
// launch gap between the short kernels of a decode step. Such a kernel starts with
// FollowPriorKernels, or reads before its WaitForPriorKernels only what the rule above allows.
template <typename... Params, typename... Args>
int LaunchMaybeAfterPrior(bool programmatic, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                          void* stream, Args... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = static_cast<cudaStream_t>(stream);
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  if (programmatic) {
    config.attrs = &attribute;
    config.numAttrs = 1;
  }
  const cudaError_t error = cudaLaunchKernelEx(&config, kernel, args...);
  if (error != cudaSuccess) (void)cudaGetLastError();  // reported here, not by the next launch
  return static_cast<int>(error);
}

// LaunchMaybeAfterPrior, always programmatic.
template <typename... Params, typename... Args>
int LaunchAfterPrior(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, void* stream,
                     Args... args) {
  return LaunchMaybeAfterPrior(true, kernel, grid, block, smem, stream, args...);
}

// Asynchronous global → shared copies (cp.async, sm_80+): issue, commit as a group, then wait
// until at most kPending groups are still in flight (and __syncthreads before other threads read),
// or have an mbarrier count their landing (ArriveWhenCopiesLand below).
__device__ __forceinline__ void CopyAsync16(void* shared, const void* global, bool valid = true) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  const int bytes = valid ? 16 : 0;  // 0: fill the 16 bytes with zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void CopyAsync4(void* shared, const void* global) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(address), "l"(global) : "memory");
}
__device__ __forceinline__ void CopyAsync8(void* shared, const void* global) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(address), "l"(global) : "memory");
}
__device__ __forceinline__ void CommitAsync() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void WaitAsync() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// A barrier among the kThreads threads of group `group` of a block (named barrier 1 + group; 0
// is __syncthreads'), for blocks whose warps work in independent groups.
template <int kThreads>
__device__ __forceinline__ void SyncGroup(int group) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(1 + group), "n"(kThreads) : "memory");
}

// Orders this thread's earlier generic-proxy accesses of shared memory (ordinary loads and stores,
// cp.async) before later async-proxy ones (bulk copies, wgmma operand reads) of the CTA.
__device__ __forceinline__ void FenceProxyAsyncShared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Bulk copies (the copy engine, sm_90) completing on a shared-memory mbarrier: one thread
// initialises the barrier (with the arrivals a phase takes) and fences it; a producer thread
// announces the bytes of a phase (ArriveExpectBytes, or ExpectBytes without arriving) and issues
// copies that count against them; consumers wait for the phase's parity. Addresses: 16-byte
// aligned, sizes multiples of 16.
__device__ __forceinline__ void InitBarrier(uint64_t* barrier, unsigned arrivals = 1) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(barrier))),
               "r"(arrivals)
               : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void ArriveExpectBytes(uint64_t* barrier, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(barrier))),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void ExpectBytes(uint64_t* barrier, unsigned bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(barrier))),
               "r"(bytes)
               : "memory");
}
// One arrival (release: this thread's earlier reads and writes happen before the phase ends).
__device__ __forceinline__ void ArriveBarrier(uint64_t* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(barrier)))
               : "memory");
}
// One arrival, made once every cp.async this thread issued before it has landed.
__device__ __forceinline__ void ArriveWhenCopiesLand(uint64_t* barrier) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(barrier)))
               : "memory");
}
__device__ __forceinline__ void BulkCopyToShared(void* shared, const void* global, unsigned bytes, uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          static_cast<unsigned>(__cvta_generic_to_shared(shared))),
      "l"(global), "r"(bytes), "r"(static_cast<unsigned>(__cvta_generic_to_shared(barrier)))
      : "memory");
}
// A ring of `stages` stage barriers set up by thread 0, then the block's barrier: full[s]
// completes once each of `producers` threads has seen its copies into stage s land, empty[s] once
// each of `consumers` threads is done with it.
__device__ __forceinline__ void InitStageRing(uint64_t* full, uint64_t* empty, int stages, unsigned producers,
                                              unsigned consumers) {
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      InitBarrier(&full[s], producers);
      InitBarrier(&empty[s], consumers);
    }
  }
  __syncthreads();
}
__device__ __forceinline__ void WaitBarrier(uint64_t* barrier, unsigned parity) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(barrier));
  unsigned done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
  }
}

// The device's SM count (132 where it cannot be read), looked up once.
inline int SmCount() {
  static const int count = [] {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return 132;
    }
    return sms;
  }();
  return count;
}

// Lets `kernel` take `bytes` of dynamic shared memory where that is over the default 48 KiB (the
// attribute belongs to the current device, so launchers set it on every launch); an error (more
// than this device has) is returned and cleared, so that no later launch check reports it.
inline int AllowDynamicSmem(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return 0;
  const cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (error != cudaSuccess) (void)cudaGetLastError();
  return static_cast<int>(error);
}
template <typename... Params>
int AllowDynamicSmem(void (*kernel)(Params...), size_t bytes) {
  return AllowDynamicSmem(reinterpret_cast<const void*>(kernel), bytes);
}

// The blocks of `kernel` (`threads` each, `shared_bytes` of dynamic shared memory) resident at
// once on the whole device: a persistent kernel's grid; 0 where the query fails (error cleared).
template <typename... Params>
int64_t ResidentBlocks(void (*kernel)(Params...), int threads, size_t shared_bytes) {
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return static_cast<int64_t>(per_sm) * SmCount();
}

// Whether an address is a multiple of `bytes` (vector loads and stores need it).
inline bool IsAligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Whether the bytes two views span (first row's start to the last row's end) overlap.
inline bool Overlap(const TensorView& a, const TensorView& b) {
  const auto span = [](const TensorView& v) {
    const auto begin = reinterpret_cast<uintptr_t>(v.data);
    const auto size = static_cast<uintptr_t>(DTypeSize(v.dtype));
    return std::pair<uintptr_t, uintptr_t>{
        begin, v.rows == 0 || v.cols == 0 ? begin : begin + ((v.rows - 1) * v.row_stride + v.cols) * size};
  };
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(b);
  return a0 < b1 && b0 < a1;
}

// Whether Load4 and Store4 may take every fourth column of an activation view (fp32 or bf16).
inline bool Aligned4(const TensorView& v) {
  return (v.dtype == DType::kF32 || v.dtype == DType::kBF16) && v.cols % 4 == 0 && v.row_stride % 4 == 0 &&
         IsAligned(v.data, v.dtype == DType::kF32 ? 16 : 8);
}

// `bytes` rounded up to 256: the alignment of each array carved from one scratch allocation.
__host__ __device__ inline constexpr size_t AlignScratch(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Whether `count` blocks fit the grid's x dimension (2^31 - 1).
inline bool FitsGridX(int64_t count) { return count > 0 && count <= 0x7fffffffLL; }

// Element-wise kernels over [rows, cols]: one thread per element, each row's columns in chunks of
// kElementThreads, rows x chunks blocks along grid x. A block that strode over a whole row waited
// one memory round trip per step (its stores may alias its next loads); a decode step's rows of a
// few thousand columns took 10-25 us that way on one SM.
constexpr unsigned kElementThreads = 256;

// The grid for [rows, cols] (0 when it does not fit grid x).
inline unsigned ElementBlocks(int64_t rows, int64_t cols) {
  const int64_t blocks = rows * ((cols + kElementThreads - 1) / kElementThreads);
  return rows > 0 && cols > 0 && FitsGridX(blocks) ? static_cast<unsigned>(blocks) : 0u;
}

// This thread's element (r, c) of [rows, cols] under ElementBlocks; false past the last column.
__device__ __forceinline__ bool ThisElement(int64_t cols, int64_t& r, int64_t& c) {
  const unsigned chunks = static_cast<unsigned>((cols + kElementThreads - 1) / kElementThreads);
  r = blockIdx.x / chunks;
  c = static_cast<int64_t>(blockIdx.x % chunks) * kElementThreads + threadIdx.x;
  return c < cols;
}

}  // namespace deltaserve::kernels::cuda
