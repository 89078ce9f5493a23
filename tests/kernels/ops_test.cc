// Where a latent page places its elements (kernels::LatentOffset): every element of a page's rows
// has its own slot, and the runs the kernels and the host copy whole stay whole.
#include "kernels/ops.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace deltaserve::kernels {
namespace {

struct PageShape {
  DType dtype;
  int64_t width, page_rows;
};

// Each (row, element) of a page lands on a distinct slot inside the page, for pages that are not
// the first (rows of later pages are keyed by their cache row, not their row in the page).
TEST(LatentOffset, PlacesEveryElementOfAPageInItsOwnSlot) {
  for (const PageShape shape : {PageShape{DType::kBF16, 576, 256}, PageShape{DType::kBF16, 128, 7},
                                PageShape{DType::kBF16, 52, 48}, PageShape{DType::kF32, 576, 256}}) {
    SCOPED_TRACE(shape.width * 1000 + shape.page_rows);
    for (const int64_t page : {0, 3}) {
      std::vector<int> hits(static_cast<size_t>(shape.width * shape.page_rows), 0);
      for (int64_t r = 0; r < shape.page_rows; ++r) {
        const int64_t row = page * shape.page_rows + r;
        for (int64_t e = 0; e < shape.width; ++e) {
          const int64_t at = LatentOffset(shape.dtype, shape.width, shape.page_rows, row, e);
          ASSERT_GE(at, 0);
          ASSERT_LT(at, shape.width * shape.page_rows);
          ++hits[static_cast<size_t>(at)];
        }
      }
      for (int hit : hits) ASSERT_EQ(hit, 1);
    }
  }
}

// BF16 pages of a width that is a multiple of 64: a column group holds its rows 64 elements apart
// (a run of rows of one group is one contiguous copy), each row's 16-byte chunks XOR-swizzled by
// the cache row (the 128-byte swizzle of Hopper's operand tiles), and 8 elements from a multiple
// of 8 stay consecutive (the host converts them together).
TEST(LatentOffset, Bf16PagesHoldSwizzledColumnGroups) {
  const int64_t width = 576, page_rows = 7;
  for (int64_t row = 0; row < 3 * page_rows; ++row) {
    const int64_t in_page = row % page_rows;
    for (int64_t e = 0; e < width; ++e) {
      const int64_t group = e / 64, chunk = (e % 64) / 8;
      const int64_t expected = (group * page_rows + in_page) * 64 + ((chunk ^ (row % 8)) * 8) + e % 8;
      ASSERT_EQ(LatentOffset(DType::kBF16, width, page_rows, row, e), expected) << row << " " << e;
    }
    for (int64_t e = 0; e < width; e += 8) {
      const LatentRowPlacement place = LatentRowPlacement::Place(DType::kBF16, width, page_rows, row);
      for (int64_t i = 1; i < 8; ++i) ASSERT_EQ(place.Offset(e + i), place.Offset(e) + i);
    }
  }
  // Widths of no whole groups, and F32 pages, hold whole rows.
  EXPECT_EQ(LatentOffset(DType::kBF16, 52, 48, 50, 7), 2 * 52 + 7);
  EXPECT_EQ(LatentOffset(DType::kF32, 576, 256, 300, 100), 44 * 576 + 100);
}

}  // namespace
}  // namespace deltaserve::kernels
