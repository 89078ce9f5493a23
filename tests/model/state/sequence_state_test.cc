// Latent rows move between fp32 on the host and a backend's pages, placed by their cache row.
#include "model/state/sequence_state.h"

#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "model/config/presets.h"
#include "tests/model/state/bf16_latent_rows.h"
#include "tests/testing/copying_backend.h"

namespace deltaserve::model {
namespace {

// BF16 pages of 7 rows (not a multiple of the swizzle's 8): a row's place in its page is not its
// cache row mod 8, and the elements must sit where kernels::LatentOffset puts them for the cache
// row (in column groups of 64, swizzled); the halved bytes show in ByteSize.
TEST(SequenceStateTest, Bf16LatentRowsArePlacedByTheirCacheRow) {
  absl::StatusOr<KimiLinearConfig> config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok());
  config->kv_lora_rank = 96;  // a width of 128: two column groups, swizzled
  config->qk_rope_head_dim = 32;
  const int64_t width = config->mla_latent_size();
  int64_t layer = 0;
  while (config->IsKda(layer)) ++layer;
  ::deltaserve::testing::CopyingBackend backend(1, kernels::DType::kBF16);
  SequenceState state(*config, backend, 0, config->num_layers, 1, /*latent_page_rows=*/7);
  constexpr int64_t kRows = 30;
  state.ReserveLatent(layer, kRows);
  MlaLayerState& mla = state.mla(layer);
  ASSERT_EQ(mla.dtype, kernels::DType::kBF16);
  std::vector<float> values(static_cast<size_t>(kRows * width));
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 251) - 125.0f;  // bf16-exact
  // Uploaded in pieces that end and start inside pages (a page is written whole, its earlier rows
  // kept): only the two ranges that start inside a page (rows 10 and 13, both on rows 7..13's
  // page) read it first.
  const int64_t downloads_before = backend.downloads();
  for (const auto& [first, count] : {std::pair<int64_t, int64_t>{0, 10}, {10, 3}, {13, 17}}) {
    mla.ForEachRange(first, count, [&](int64_t row, int64_t n, kernels::TensorView page) {
      UploadLatentRows(backend, values.data() + row * width, page, row, n);
    });
  }
  EXPECT_EQ(backend.downloads() - downloads_before, 2);
  mla.num_cached = kRows;
  std::vector<float> back(values.size());
  int64_t moved = 0;
  mla.ForEachRange(0, kRows, [&](int64_t first, int64_t n, kernels::TensorView page) {
    DownloadLatentRows(backend, page, first, n, back.data() + first * width);
    ExpectPlacedByCacheRow(backend, page, first, n, values, &moved);
  });
  EXPECT_EQ(back, values);
  EXPECT_GT(moved, 0);
  // Only this layer holds rows: 2 bytes each.
  EXPECT_EQ(state.ByteSize() - SequenceState(*config, backend, 0, config->num_layers, 1, 7).ByteSize(),
            kRows * width * 2);
}

}  // namespace
}  // namespace deltaserve::model
