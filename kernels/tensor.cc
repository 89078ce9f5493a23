#include "kernels/tensor.h"

#include "kernels/backend.h"

namespace deltaserve::kernels {

Tensor& Tensor::operator=(Tensor&& other) noexcept {
  if (this != &other) {
    Reset();
    owner_ = other.owner_;
    view_ = other.view_;
    other.owner_ = nullptr;
    other.view_ = TensorView{};
  }
  return *this;
}

void Tensor::Reset() {
  if (owner_ != nullptr && view_.data != nullptr) owner_->Free(view_.data);
  owner_ = nullptr;
  view_ = TensorView{};
}

}  // namespace deltaserve::kernels
