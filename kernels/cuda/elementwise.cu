// Element kernels: embedding lookup, residual add, SwiGLU, row gather/scatter and the
// F32 -> BF16/F16 conversion. One thread per element (ElementBlocks), eight for the conversion
// where rows allow.
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

int LastError() { return static_cast<int>(cudaGetLastError()); }

__global__ void EmbedKernel(const int32_t* ids, TensorView table, TensorView out) {
  int64_t t, c;
  if (!ThisElement(out.cols, t, c)) return;
  const int32_t id = ids[t];
  const bool valid = id >= 0 && id < table.rows;  // an invalid id gives a row of NaN
  RowF32(out, t)[c] = valid ? LoadAt(table, id, c) : __int_as_float(0x7fc00000);
}

__global__ void AddKernel(TensorView acc, TensorView x) {
  FollowPriorKernels();
  int64_t t, c;
  if (!ThisElement(acc.cols, t, c)) return;
  RowF32(acc, t)[c] += RowF32(x, t)[c];
}

__global__ void SwiGluKernel(TensorView gate, TensorView up, TensorView out) {
  FollowPriorKernels();
  int64_t t, c;
  if (!ThisElement(out.cols, t, c)) return;
  RowF32(out, t)[c] = SiluF(RowF32(gate, t)[c]) * RowF32(up, t)[c];
}

// dst row dst_row(i) = src row src_row(i) for elements of type T (the dtype's size); rows out
// of range are skipped.
template <typename T, bool kGather>
__global__ void MoveRowsKernel(TensorView src, const int64_t* rows, TensorView dst) {
  FollowPriorKernels();
  int64_t i, c;
  if (!ThisElement(src.cols, i, c)) return;
  const int64_t src_row = kGather ? rows[i] : i;
  const int64_t dst_row = kGather ? i : rows[i];
  if (src_row < 0 || src_row >= src.rows || dst_row < 0 || dst_row >= dst.rows) return;
  static_cast<T*>(dst.data)[dst_row * dst.row_stride + c] =
      static_cast<const T*>(src.data)[src_row * src.row_stride + c];
}

template <typename T>
__device__ __forceinline__ T FromFloat(float value);
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float value) {
  return __float2half_rn(value);
}

template <typename T>
__global__ void ConvertF32Kernel(TensorView src, T* dst) {
  int64_t r, c;
  if (!ThisElement(src.cols, r, c)) return;
  dst[r * src.cols + c] = FromFloat<T>(RowF32(src, r)[c]);
}

// Eight elements per thread (two 16-byte loads, one 16-byte store): rows of a multiple of 8
// columns, 16-byte aligned. One element per thread reached ~40% of the copy bandwidth.
template <typename T>
__global__ void ConvertF32x8Kernel(TensorView src, T* dst) {
  int64_t r, c8;
  if (!ThisElement(src.cols / 8, r, c8)) return;
  const float4* in = reinterpret_cast<const float4*>(RowF32(src, r) + c8 * 8);
  const float4 lo = in[0], hi = in[1];
  const float values[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  alignas(16) T out[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = FromFloat<T>(values[i]);
  *reinterpret_cast<uint4*>(dst + r * src.cols + c8 * 8) = *reinterpret_cast<const uint4*>(out);
}

__global__ void WidenToF32Kernel(TensorView src, float* dst) {
  int64_t r, c;
  if (!ThisElement(src.cols, r, c)) return;
  dst[r * src.cols + c] = LoadAt(src, r, c);
}

template <bool kGather>
int LaunchMoveRows(TensorView src, const int64_t* rows, int64_t n, TensorView dst,
                   Stream stream) {
  if (src.dtype != dst.dtype || src.cols != dst.cols || n < 0) return kInvalid;
  if (n != (kGather ? dst.rows : src.rows)) return kInvalid;
  if (n == 0 || src.cols == 0) return 0;
  const unsigned blocks = ElementBlocks(n, src.cols);
  if (blocks == 0 || rows == nullptr) return kInvalid;
  const auto s = static_cast<cudaStream_t>(stream);
  if (DTypeSize(src.dtype) == 4) {
    return LaunchAfterPrior(MoveRowsKernel<uint32_t, kGather>, dim3(blocks), dim3(kElementThreads), 0, s, src,
                            rows, dst);
  }
  if (DTypeSize(src.dtype) == 2) {
    return LaunchAfterPrior(MoveRowsKernel<uint16_t, kGather>, dim3(blocks), dim3(kElementThreads), 0, s, src,
                            rows, dst);
  }
  return kInvalid;
}

}  // namespace

int LaunchEmbed(const int32_t* ids, int64_t n, TensorView table, TensorView out, Stream stream) {
  if (out.dtype != DType::kF32 || out.rows != n || table.cols != out.cols) return kInvalid;
  if (n == 0 || out.cols == 0) return 0;
  const unsigned blocks = ElementBlocks(n, out.cols);
  if (blocks == 0 || ids == nullptr) return kInvalid;
  EmbedKernel<<<blocks, kElementThreads, 0, static_cast<cudaStream_t>(stream)>>>(ids, table, out);
  return LastError();
}

int LaunchAdd(TensorView acc, TensorView x, Stream stream) {
  if (acc.dtype != DType::kF32 || x.dtype != DType::kF32) return kInvalid;
  if (acc.rows != x.rows || acc.cols != x.cols) return kInvalid;
  if (acc.rows == 0 || acc.cols == 0) return 0;
  const unsigned blocks = ElementBlocks(acc.rows, acc.cols);
  if (blocks == 0) return kInvalid;
  return LaunchAfterPrior(AddKernel, dim3(blocks), dim3(kElementThreads), 0, stream, acc, x);
}

int LaunchSwiGlu(TensorView gate, TensorView up, TensorView out, Stream stream) {
  if (gate.dtype != DType::kF32 || up.dtype != DType::kF32 || out.dtype != DType::kF32) {
    return kInvalid;
  }
  if (gate.rows != up.rows || gate.cols != up.cols || out.rows != gate.rows ||
      out.cols != gate.cols) {
    return kInvalid;
  }
  if (out.rows == 0 || out.cols == 0) return 0;
  const unsigned blocks = ElementBlocks(out.rows, out.cols);
  if (blocks == 0) return kInvalid;
  return LaunchAfterPrior(SwiGluKernel, dim3(blocks), dim3(kElementThreads), 0, stream, gate, up, out);
}

int LaunchGatherRows(TensorView src, const int64_t* rows, int64_t n, TensorView dst,
                     Stream stream) {
  return LaunchMoveRows<true>(src, rows, n, dst, stream);
}

int LaunchScatterRows(TensorView src, const int64_t* rows, int64_t n, TensorView dst,
                      Stream stream) {
  return LaunchMoveRows<false>(src, rows, n, dst, stream);
}

int LaunchConvertF32(TensorView src, DType dtype, void* dst, Stream stream) {
  if (src.dtype != DType::kF32 || (dtype != DType::kBF16 && dtype != DType::kF16)) {
    return kInvalid;
  }
  if (src.rows == 0 || src.cols == 0) return 0;
  if (dst == nullptr) return kInvalid;
  const auto s = static_cast<cudaStream_t>(stream);
  if (src.cols % 8 == 0 && src.row_stride % 4 == 0 && IsAligned(src.data, 16) && IsAligned(dst, 16)) {
    const unsigned blocks = ElementBlocks(src.rows, src.cols / 8);
    if (blocks == 0) return kInvalid;
    if (dtype == DType::kBF16) {
      ConvertF32x8Kernel<<<blocks, kElementThreads, 0, s>>>(src, static_cast<__nv_bfloat16*>(dst));
    } else {
      ConvertF32x8Kernel<<<blocks, kElementThreads, 0, s>>>(src, static_cast<__half*>(dst));
    }
    return LastError();
  }
  const unsigned blocks = ElementBlocks(src.rows, src.cols);
  if (blocks == 0) return kInvalid;
  if (dtype == DType::kBF16) {
    ConvertF32Kernel<<<blocks, kElementThreads, 0, s>>>(src, static_cast<__nv_bfloat16*>(dst));
  } else {
    ConvertF32Kernel<<<blocks, kElementThreads, 0, s>>>(src, static_cast<__half*>(dst));
  }
  return LastError();
}

int LaunchWidenToF32(TensorView src, float* dst, Stream stream) {
  if (src.rows == 0 || src.cols == 0) return 0;
  const unsigned blocks = ElementBlocks(src.rows, src.cols);
  if (blocks == 0 || dst == nullptr) return kInvalid;
  const auto s = static_cast<cudaStream_t>(stream);
  WidenToF32Kernel<<<blocks, kElementThreads, 0, s>>>(src, dst);
  return LastError();
}

}  // namespace deltaserve::kernels::cuda
