// 16x16 bf16 tensor-core tiles in shared memory, loaded by ldmatrix and multiplied by
// mma.sync.m16n8k16 (fp32 accumulation), with the accumulator's element layout spelled out so
// kernels can work on it in registers. (nvcuda::wmma's bf16 loads come out as generic 32-bit loads
// and register transposes; these are one ldmatrix each.)
//
// Every pointer is to shared memory, rows 16-byte aligned (a row stride that is a multiple of 8
// bf16), the tile's first column a multiple of 8.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace deltaserve::kernels::cuda {

// The A operand of a 16x16x16 product (16 rows m, 16 columns k).
struct TileA16 {
  uint32_t x[4];
};
// The B operand (16 rows k, 16 columns n): x[0..1] for columns 0..7, x[2..3] for 8..15.
struct TileB16 {
  uint32_t x[4];
};
// A 16x16 fp32 accumulator. Element i of a lane: row AccRow(i), column AccCol(i).
struct TileAcc16 {
  float x[8];
};

__device__ __forceinline__ int AccRow(int i, int lane) { return (lane >> 2) + ((i >> 1) & 1) * 8; }
__device__ __forceinline__ int AccCol(int i, int lane) { return (i >> 2) * 8 + (lane & 3) * 2 + (i & 1); }

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void LoadMatrices(uint32_t (&x)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
               : "r"(SharedAddress(p)));
}
__device__ __forceinline__ void LoadMatricesTransposed(uint32_t (&x)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
               : "r"(SharedAddress(p)));
}

// A from row-major storage: p[m * ld + k].
__device__ __forceinline__ void LoadA(TileA16& a, const __nv_bfloat16* p, int ld, int lane) {
  LoadMatrices(a.x, p + (lane & 15) * ld + (lane >> 4) * 8);
}
// A from its transpose's row-major storage: p[k * ld + m].
__device__ __forceinline__ void LoadATransposed(TileA16& a, const __nv_bfloat16* p, int ld, int lane) {
  const int matrix = lane >> 3;
  LoadMatricesTransposed(a.x, p + ((matrix >> 1) * 8 + (lane & 7)) * ld + (matrix & 1) * 8);
}
// B from row-major storage: p[k * ld + n].
__device__ __forceinline__ void LoadB(TileB16& b, const __nv_bfloat16* p, int ld, int lane) {
  const int matrix = lane >> 3;
  LoadMatricesTransposed(b.x, p + ((matrix & 1) * 8 + (lane & 7)) * ld + (matrix >> 1) * 8);
}
// B from its transpose's row-major storage: p[n * ld + k].
__device__ __forceinline__ void LoadBTransposed(TileB16& b, const __nv_bfloat16* p, int ld, int lane) {
  const int matrix = lane >> 3;
  LoadMatrices(b.x, p + ((matrix >> 1) * 8 + (lane & 7)) * ld + (matrix & 1) * 8);
}

// Two fp32 values rounded to bf16, `lo` in the low half: one register of an mma operand.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

// c[0..3] += a · (b0, b1): one m16n8k16 product, c in the accumulator's layout for 8 columns.
__device__ __forceinline__ void Mma16x8x16(float* c, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// acc += a · b.
__device__ __forceinline__ void MmaTile(TileAcc16& acc, const TileA16& a, const TileB16& b) {
  Mma16x8x16(acc.x, a.x, b.x[0], b.x[1]);
  Mma16x8x16(acc.x + 4, a.x, b.x[2], b.x[3]);
}

__device__ __forceinline__ void ZeroTile(TileAcc16& acc) {
#pragma unroll
  for (int i = 0; i < 8; ++i) acc.x[i] = 0.0f;
}

// The accumulator into row-major fp32 storage p[r * ld + c] (pairs of columns: ld even, p 8-byte
// aligned).
__device__ __forceinline__ void StoreTile(const TileAcc16& acc, float* p, int ld, int lane) {
#pragma unroll
  for (int i = 0; i < 8; i += 2) {
    *reinterpret_cast<float2*>(p + AccRow(i, lane) * ld + AccCol(i, lane)) = make_float2(acc.x[i], acc.x[i + 1]);
  }
}

// The accumulator into row-major bf16 storage (pairs of columns: ld even, p 4-byte aligned).
__device__ __forceinline__ void StoreTileBf16(const TileAcc16& acc, __nv_bfloat16* p, int ld, int lane) {
#pragma unroll
  for (int i = 0; i < 8; i += 2) {
    *reinterpret_cast<__nv_bfloat162*>(p + AccRow(i, lane) * ld + AccCol(i, lane)) =
        __floats2bfloat162_rn(acc.x[i], acc.x[i + 1]);
  }
}

}  // namespace deltaserve::kernels::cuda
