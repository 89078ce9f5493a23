// Tensor views and owning tensors in a backend's memory (host memory for the CPU backend,
// device memory for the CUDA one). Views are plain data; tensors free their memory on destruction.
#pragma once

#include <cstdint>
#include <utility>

#include "kernels/dtype.h"

namespace deltaserve::kernels {

// A row-major matrix: element (r, c) lives at data + (r * row_stride + c) * DTypeSize(dtype).
// Tensors of higher rank are viewed as matrices ([T, H, d] is rows = T, cols = H * d).
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;  // in elements

  int64_t numel() const { return rows * cols; }
  bool contiguous() const { return row_stride == cols; }

  template <typename T>
  T* row(int64_t r) const {
    return reinterpret_cast<T*>(static_cast<char*>(data) +
                                static_cast<size_t>(r * row_stride) * DTypeSize(dtype));
  }
  // Rows [begin, begin + count).
  TensorView Rows(int64_t begin, int64_t count) const {
    TensorView view = *this;
    view.data = static_cast<char*>(data) + static_cast<size_t>(begin * row_stride) * DTypeSize(dtype);
    view.rows = count;
    return view;
  }
  // Columns [begin, begin + count) of every row.
  TensorView Cols(int64_t begin, int64_t count) const {
    TensorView view = *this;
    view.data = static_cast<char*>(data) + static_cast<size_t>(begin) * DTypeSize(dtype);
    view.cols = count;
    return view;
  }
};

inline TensorView MakeView(void* data, DType dtype, int64_t rows, int64_t cols) {
  return TensorView{data, dtype, rows, cols, cols};
}

class Backend;

// Owns `rows x cols` contiguous elements allocated by (and freed through) a backend.
class Tensor {
 public:
  Tensor() = default;
  Tensor(Backend* owner, void* data, DType dtype, int64_t rows, int64_t cols)
      : owner_(owner), view_{data, dtype, rows, cols, cols} {}
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  Tensor(Tensor&& other) noexcept { *this = std::move(other); }
  Tensor& operator=(Tensor&& other) noexcept;
  ~Tensor() { Reset(); }

  const TensorView& view() const { return view_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(view_.data);
  }
  int64_t rows() const { return view_.rows; }
  int64_t cols() const { return view_.cols; }
  DType dtype() const { return view_.dtype; }
  bool empty() const { return view_.data == nullptr; }
  Backend* owner() const { return owner_; }

  void Reset();

 private:
  Backend* owner_ = nullptr;
  TensorView view_;
};

}  // namespace deltaserve::kernels
