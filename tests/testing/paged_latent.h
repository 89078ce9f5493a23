// A latent cache laid out as kernels::LatentPages sees it, for tests: the pages of `rows` logical
// rows sit in one buffer in shuffled order, so a kernel that ignored the page table would read
// the wrong rows; within a page the elements sit where kernels::LatentOffset puts them for the
// pages' dtype.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/ops.h"

namespace deltaserve::testing {

class PageLayout {
 public:
  PageLayout(int64_t rows, int64_t page_rows, int64_t width, uint64_t seed)
      : page_rows_(page_rows), width_(width), pages_(std::max<int64_t>(1, (rows + page_rows - 1) / page_rows)) {
    slot_.resize(static_cast<size_t>(pages_));
    std::iota(slot_.begin(), slot_.end(), int64_t{0});
    std::mt19937_64 rng(seed);
    std::shuffle(slot_.begin(), slot_.end(), rng);
  }

  int64_t page_rows() const { return page_rows_; }
  // Floats of the buffer the pages sit in.
  int64_t buffer_floats() const { return pages_ * page_rows_ * width_; }

  // The buffer holding `logical` rows (row-major, [n, width], n within the pages) placed as pages
  // of `dtype` place them (the values stay floats; the caller converts); the rest `unused` (a NaN
  // there shows a kernel reading past the history).
  std::vector<float> ToBuffer(const std::vector<float>& logical, float unused = 0.0f,
                              kernels::DType dtype = kernels::DType::kF32) const {
    std::vector<float> buffer(static_cast<size_t>(buffer_floats()), unused);
    const int64_t n = static_cast<int64_t>(logical.size()) / width_;
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t e = 0; e < width_; ++e) buffer[Offset(dtype, r, e)] = logical[r * width_ + e];
    }
    return buffer;
  }
  // Logical rows [0, n) read back from a buffer of pages of `dtype`.
  std::vector<float> FromBuffer(const std::vector<float>& buffer, int64_t n,
                                kernels::DType dtype = kernels::DType::kF32) const {
    std::vector<float> logical(static_cast<size_t>(n * width_));
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t e = 0; e < width_; ++e) logical[r * width_ + e] = buffer[Offset(dtype, r, e)];
    }
    return logical;
  }
  // The page table over a buffer of `element_bytes`-byte elements (F32 or BF16 pages) that starts
  // at `base` (host or device memory).
  std::vector<void*> Pages(void* base, int64_t element_bytes = sizeof(float)) const {
    std::vector<void*> pages(static_cast<size_t>(pages_));
    for (int64_t p = 0; p < pages_; ++p) {
      pages[static_cast<size_t>(p)] = static_cast<char*>(base) + slot_[p] * page_rows_ * width_ * element_bytes;
    }
    return pages;
  }

 private:
  size_t Offset(kernels::DType dtype, int64_t row, int64_t e) const {
    return static_cast<size_t>(slot_[static_cast<size_t>(row / page_rows_)] * page_rows_ * width_ +
                               kernels::LatentOffset(dtype, width_, page_rows_, row, e));
  }

  int64_t page_rows_, width_, pages_;
  std::vector<int64_t> slot_;  // logical page → its place in the buffer
};

}  // namespace deltaserve::testing
