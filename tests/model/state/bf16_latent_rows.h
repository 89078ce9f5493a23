// Checks for BF16 latent pages in the model/state tests: every element of a page's rows sits where
// kernels::LatentOffset puts it for its cache row.
#pragma once

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace deltaserve::model {

// Cache rows [first, first + n) lie in `page`, a BF16 page ([page_rows, width]); expected[(first +
// r) * width + e] is element e of cache row first + r, in fp32. Adds the elements placed elsewhere
// than in a row-major page to *moved.
inline void ExpectPlacedByCacheRow(kernels::Backend& backend, kernels::TensorView page, int64_t first, int64_t n,
                                   const std::vector<float>& expected, int64_t* moved) {
  const int64_t page_rows = page.rows, width = page.cols;
  std::vector<uint16_t> raw(static_cast<size_t>(page.numel()));
  backend.Download(page, raw.data());
  for (int64_t r = 0; r < n; ++r) {
    const int64_t row = first + r;
    for (int64_t e = 0; e < width; ++e) {
      const int64_t at = kernels::LatentOffset(kernels::DType::kBF16, width, page_rows, row, e);
      *moved += at != (row % page_rows) * width + e;
      ASSERT_EQ(raw[at], kernels::F32ToBF16(expected[row * width + e])) << "row " << row;
    }
  }
}

}  // namespace deltaserve::model
