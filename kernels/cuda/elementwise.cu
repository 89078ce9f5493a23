// Row-wise element kernels: embedding lookup, residual add, SwiGLU, row gather/scatter and the
// F32 -> BF16/F16 conversion. One block per row, its threads striding over the columns.
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

int LastError() { return static_cast<int>(cudaGetLastError()); }

__global__ void EmbedKernel(const int32_t* ids, TensorView table, TensorView out) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  float* o = RowF32(out, t);
  const bool valid = id >= 0 && id < table.rows;  // an invalid id gives a row of NaN
  for (int64_t c = threadIdx.x; c < out.cols; c += blockDim.x) {
    o[c] = valid ? LoadAt(table, id, c) : __int_as_float(0x7fc00000);
  }
}

__global__ void AddKernel(TensorView acc, TensorView x) {
  const int64_t t = blockIdx.x;
  float* a = RowF32(acc, t);
  const float* b = RowF32(x, t);
  for (int64_t c = threadIdx.x; c < acc.cols; c += blockDim.x) a[c] += b[c];
}

__global__ void SwiGluKernel(TensorView gate, TensorView up, TensorView out) {
  AllowDependentLaunch();
  const int64_t t = blockIdx.x;
  const float* g = RowF32(gate, t);
  const float* u = RowF32(up, t);
  float* o = RowF32(out, t);
  for (int64_t c = threadIdx.x; c < out.cols; c += blockDim.x) o[c] = SiluF(g[c]) * u[c];
}

// dst row dst_row(i) = src row src_row(i) for elements of type T (the dtype's size); rows out
// of range are skipped.
template <typename T, bool kGather>
__global__ void MoveRowsKernel(TensorView src, const int64_t* rows, TensorView dst) {
  const int64_t i = blockIdx.x;
  const int64_t src_row = kGather ? rows[i] : i;
  const int64_t dst_row = kGather ? i : rows[i];
  if (src_row < 0 || src_row >= src.rows || dst_row < 0 || dst_row >= dst.rows) return;
  const T* s = static_cast<const T*>(src.data) + src_row * src.row_stride;
  T* d = static_cast<T*>(dst.data) + dst_row * dst.row_stride;
  for (int64_t c = threadIdx.x; c < src.cols; c += blockDim.x) d[c] = s[c];
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
  const int64_t r = blockIdx.x;
  const float* s = RowF32(src, r);
  T* d = dst + r * src.cols;
  for (int64_t c = threadIdx.x; c < src.cols; c += blockDim.x) d[c] = FromFloat<T>(s[c]);
}

__global__ void WidenToF32Kernel(TensorView src, float* dst) {
  const int64_t r = blockIdx.x;
  float* d = dst + r * src.cols;
  for (int64_t c = threadIdx.x; c < src.cols; c += blockDim.x) d[c] = LoadAt(src, r, c);
}

template <bool kGather>
int LaunchMoveRows(TensorView src, const int64_t* rows, int64_t n, TensorView dst,
                   Stream stream) {
  if (src.dtype != dst.dtype || src.cols != dst.cols || n < 0) return kInvalid;
  if (n != (kGather ? dst.rows : src.rows)) return kInvalid;
  if (n == 0 || src.cols == 0) return 0;
  if (!FitsGridX(n) || rows == nullptr) return kInvalid;
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned threads = RowBlockThreads(src.cols);
  if (DTypeSize(src.dtype) == 4) {
    MoveRowsKernel<uint32_t, kGather><<<static_cast<unsigned>(n), threads, 0, s>>>(src, rows, dst);
  } else if (DTypeSize(src.dtype) == 2) {
    MoveRowsKernel<uint16_t, kGather><<<static_cast<unsigned>(n), threads, 0, s>>>(src, rows, dst);
  } else {
    return kInvalid;
  }
  return LastError();
}

}  // namespace

int LaunchEmbed(const int32_t* ids, int64_t n, TensorView table, TensorView out, Stream stream) {
  if (out.dtype != DType::kF32 || out.rows != n || table.cols != out.cols) return kInvalid;
  if (n == 0 || out.cols == 0) return 0;
  if (!FitsGridX(n) || ids == nullptr) return kInvalid;
  EmbedKernel<<<static_cast<unsigned>(n), RowBlockThreads(out.cols), 0,
                static_cast<cudaStream_t>(stream)>>>(ids, table, out);
  return LastError();
}

int LaunchAdd(TensorView acc, TensorView x, Stream stream) {
  if (acc.dtype != DType::kF32 || x.dtype != DType::kF32) return kInvalid;
  if (acc.rows != x.rows || acc.cols != x.cols) return kInvalid;
  if (acc.rows == 0 || acc.cols == 0) return 0;
  if (!FitsGridX(acc.rows)) return kInvalid;
  AddKernel<<<static_cast<unsigned>(acc.rows), RowBlockThreads(acc.cols), 0,
              static_cast<cudaStream_t>(stream)>>>(acc, x);
  return LastError();
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
  if (!FitsGridX(out.rows)) return kInvalid;
  SwiGluKernel<<<static_cast<unsigned>(out.rows), RowBlockThreads(out.cols), 0,
                 static_cast<cudaStream_t>(stream)>>>(gate, up, out);
  return LastError();
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
  if (!FitsGridX(src.rows) || dst == nullptr) return kInvalid;
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = static_cast<unsigned>(src.rows);
  const unsigned threads = RowBlockThreads(src.cols);
  if (dtype == DType::kBF16) {
    ConvertF32Kernel<<<blocks, threads, 0, s>>>(src, static_cast<__nv_bfloat16*>(dst));
  } else {
    ConvertF32Kernel<<<blocks, threads, 0, s>>>(src, static_cast<__half*>(dst));
  }
  return LastError();
}

int LaunchWidenToF32(TensorView src, float* dst, Stream stream) {
  if (src.rows == 0 || src.cols == 0) return 0;
  if (!FitsGridX(src.rows) || dst == nullptr) return kInvalid;
  const auto s = static_cast<cudaStream_t>(stream);
  WidenToF32Kernel<<<static_cast<unsigned>(src.rows), RowBlockThreads(src.cols), 0, s>>>(src, dst);
  return LastError();
}

}  // namespace deltaserve::kernels::cuda
