// Hopper warpgroup matrix products (wgmma, sm_90a): four consecutive warps, starting at a warp
// index divisible by 4, multiply bf16 tiles that sit in shared memory (read through descriptors,
// by the async proxy; A may come from registers instead) into fp32 accumulators in their
// registers, asynchronously: issue a batch (WgmmaFence first, then products), commit it as a
// group, wait until at most N groups remain.
//
// Shared tiles use the 128-byte swizzle: rows of 64 bf16, 16-byte chunk c of row r stored at
// chunk c ^ (r % 8), each tile 1024-byte aligned. K-major tiles hold rows along the reduction
// dimension (as an [m, k] activation and an [n, k] weight are stored); MN-major ones, for an
// operand read down its stored rows ([k, n] or [k, m], e.g. attention values), rows along n or
// m. Shared memory written by ordinary stores or cp.async needs FenceProxyAsyncShared in each
// writing thread (after its copies land; device_utils.cuh) and a barrier before a product reads
// it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace deltaserve::kernels::cuda {

// Whether kernels built on these run here: the build targets sm_90a (DELTASERVE_CUDA_WGMMA) and
// the current device is of compute capability 9.0 (sm_90a code runs there only).
inline bool WgmmaRuns() {
#if defined(DELTASERVE_CUDA_WGMMA)
  int device = 0, major = 0, minor = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess && major == 9 &&
         minor == 0;
#else
  return false;
#endif
}

// Dynamic shared memory from its first 1024-byte-aligned shared address (swizzled tiles need the
// alignment of the shared address itself, so a kernel reserves 1024 bytes more than it uses):
// the generic pointer, and the shared address in `address`.
__device__ __forceinline__ unsigned char* SwizzleAlignedShared(unsigned char* raw, uint32_t& address) {
  const uint32_t raw_address = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
  address = (raw_address + 1023) & ~1023u;
  return raw + (address - raw_address);
}

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-swizzled tile.
__device__ __forceinline__ uint32_t SwizzledChunkOffset(int row, int chunk) {
  return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// The descriptor of a 128-byte-swizzled K-major tile at shared address `address` (1024-byte
// aligned): 8-row groups 1024 bytes apart (the stride offset); the leading offset is unused in
// this layout. Add 2 per 16 columns of k to step along a row (32 bytes, swizzled by the hardware).
__device__ __forceinline__ uint64_t SwizzledTileDescriptor(uint32_t address) {
  uint64_t descriptor = (address & 0x3FFFF) >> 4;
  descriptor |= uint64_t{16 >> 4} << 16;
  descriptor |= uint64_t{1024 >> 4} << 32;
  descriptor |= uint64_t{1} << 62;
  return descriptor;
}

// The descriptor of a 128-byte-swizzled MN-major tile (an operand whose reduction runs down the
// stored rows, e.g. values [keys, columns]: B of O = P·V, or A of Oᵀ = Vᵀ·Pᵀ): 64 columns per
// 128-byte row, 8-row groups of k 1024 bytes apart, each further 64 columns `column_block_bytes`
// on. 1024-byte aligned; add 2048 bytes per 16 rows of k to step along k.
__device__ __forceinline__ uint64_t SwizzledMnMajorDescriptor(uint32_t address, uint32_t column_block_bytes) {
  uint64_t descriptor = (address & 0x3FFFF) >> 4;
  descriptor |= uint64_t{(column_block_bytes >> 4) & 0x3FFF} << 16;
  descriptor |= uint64_t{1024 >> 4} << 32;
  descriptor |= uint64_t{1} << 62;
  return descriptor;
}

__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Raises (kIncrease) or lowers this warpgroup's registers per thread: every thread of the
// warpgroup executes it, in a kernel with a register cap at entry (__launch_bounds__(n, 1)).
template <int kRegisters, bool kIncrease>
__device__ __forceinline__ void SetMaxRegisters() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kIncrease) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
  }
#endif
}

// Keeps the compiler from moving accumulator reads or writes across an asynchronous product.
template <int kCount>
__device__ __forceinline__ void PinAccumulators(float (&d)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d[64 x 256] += A[64 x 16] · B[256 x 16]ᵀ, both K-major in shared memory. Accumulator layout: warp
// w of the group holds rows 16w..16w+15; for n8 block j (columns 8j..8j+7) a lane holds d[4j],
// d[4j+1] at row lane / 4, columns 8j + 2 (lane % 4) + {0, 1}, and d[4j+2], d[4j+3] eight rows below.
__device__ __forceinline__ void WgmmaM64N256K16(float (&d)[128], uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n"
      ".reg .pred accumulate;\n"
      "setp.ne.b32 accumulate, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "%128, %129, accumulate, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a), "l"(b), "r"(1));
#else
  __trap();  // not built for sm_90a: hosts check DELTASERVE_CUDA_WGMMA before launching
#endif
}

// d[64 x 64] += A[64 x 16] · B[64 x 16]ᵀ, both K-major in shared memory (layout as above, n8
// blocks j = 0..7).
__device__ __forceinline__ void WgmmaM64N64K16(float (&d)[32], uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n"
      ".reg .pred accumulate;\n"
      "setp.ne.b32 accumulate, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, accumulate, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
#else
  __trap();
#endif
}

// d[64 x 32] += A[64 x 16] · B[32 x 16]ᵀ, B K-major in shared memory, A K-major too or, with
// kMnMajorA, MN-major (stored as rows of k, [k, m]: attention values read as Vᵀ; see
// SwizzledMnMajorDescriptor). Accumulator layout as above, n8 blocks j = 0..3.
template <bool kMnMajorA>
__device__ __forceinline__ void WgmmaM64N32K16(float (&d)[16], uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n"
      ".reg .pred accumulate;\n"
      "setp.ne.b32 accumulate, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "%16, %17, accumulate, 1, 1, %19, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(1), "n"(kMnMajorA ? 1 : 0));
#else
  __trap();
#endif
}

// d[64 x 128] += A[64 x 16] · B[16 x 128]: A from registers in the accumulator's layout (a[0]:
// row lane / 4, columns 2 (lane % 4) + {0, 1}; a[1]: eight rows below; a[2], a[3]: the same 8
// columns on), B MN-major in shared memory (rows of k, see SwizzledMnMajorDescriptor).
__device__ __forceinline__ void WgmmaM64N128K16RegisterA(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n"
      ".reg .pred accumulate;\n"
      "setp.ne.b32 accumulate, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, accumulate, 1, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#else
  __trap();
#endif
}

}  // namespace deltaserve::kernels::cuda
