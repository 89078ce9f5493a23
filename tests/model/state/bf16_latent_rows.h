// Checks for BF16 latent pages in the model/state tests: every element of a page's rows sits where
// kernels::LatentPosition puts it for its cache row.
#pragma once

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace deltaserve::model {

// `rows` holds cache rows [first, first + rows.rows) of BF16 pages; expected[(first + r) * width
// + e] is element e of cache row first + r, in fp32. Adds the elements the swizzle moved to *moved.
inline void ExpectPlacedByCacheRow(kernels::Backend& backend, kernels::TensorView rows, int64_t first,
                                   const std::vector<float>& expected, int64_t* moved) {
  const int64_t width = rows.cols;
  std::vector<uint16_t> raw(static_cast<size_t>(rows.numel()));
  backend.Download(rows, raw.data());
  for (int64_t r = 0; r < rows.rows; ++r) {
    for (int64_t e = 0; e < width; ++e) {
      const int64_t at = kernels::LatentPosition(kernels::DType::kBF16, width, first + r, e);
      *moved += at != e;
      ASSERT_EQ(raw[r * width + at], kernels::F32ToBF16(expected[(first + r) * width + e])) << "row " << first + r;
    }
  }
}

}  // namespace deltaserve::model
