// Synthetic histories: the state reports the history's length, holds the promised capacity, is
// deterministic, survives a snapshot round trip, and decode steps run on it without regrowing it.
#include "model/state/synthetic_history.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/config/presets.h"
#include "model/kimi_linear_model.h"
#include "tests/testing/copying_backend.h"

namespace deltaserve::model {
namespace {

class SyntheticHistoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<KimiLinearModel>> model =
        KimiLinearModel::Load("random:tiny:1", backend_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
  }

  std::unique_ptr<SequenceState> Synthetic(int64_t length, int64_t spare_rows, uint64_t seed) {
    std::unique_ptr<SequenceState> state = model_->NewState();
    FillSyntheticHistory(*state, length, spare_rows, seed);
    return state;
  }

  std::vector<float> DecodeStep(SequenceState& state, int32_t token = 7) {
    std::vector<float> logits;
    const SequenceInput input{{&token, 1}, &state, {0}};
    const absl::Status status = model_->Forward({&input, 1}, logits);
    EXPECT_TRUE(status.ok()) << status;
    return logits;
  }

  const KimiLinearConfig& config() const { return model_->config(); }

  kernels::cpu::CpuBackend backend_{{.num_threads = 2}};
  std::unique_ptr<KimiLinearModel> model_;
};

TEST_F(SyntheticHistoryTest, ReportsItsLengthAndCapacity) {
  const int64_t length = 300;
  std::unique_ptr<SequenceState> state = Synthetic(length, 4, 9);
  EXPECT_EQ(state->num_tokens(), length);
  int64_t kda_bytes = 0;
  int64_t mla_layers = 0;
  for (int64_t layer = 0; layer < config().num_layers; ++layer) {
    if (config().IsKda(layer)) {
      const KdaLayerState& kda = state->kda(layer);
      kda_bytes += kda.recurrent.view().numel() * 4;
      for (const kernels::Tensor& tail : kda.conv_tails) kda_bytes += tail.view().numel() * 4;
    } else {
      ++mla_layers;
      EXPECT_EQ(state->mla(layer).num_cached, length);
      // Whole pages for the rows and the spare ones.
      EXPECT_EQ(state->mla(layer).capacity(), (length + 4 + kDefaultLatentPageRows - 1) /
                                                  kDefaultLatentPageRows * kDefaultLatentPageRows);
    }
  }
  const int64_t row_bytes = config().mla_latent_size() * 4;
  const int64_t capacity = (length + 4 + kDefaultLatentPageRows - 1) / kDefaultLatentPageRows * kDefaultLatentPageRows;
  EXPECT_EQ(state->ByteSize(), kda_bytes + mla_layers * length * row_bytes);
  EXPECT_EQ(state->AllocatedByteSize(), kda_bytes + mla_layers * capacity * row_bytes);
}

TEST_F(SyntheticHistoryTest, DecodeStepsRunWithinTheSpareRows) {
  std::unique_ptr<SequenceState> state = Synthetic(200, 3, 2);
  const int64_t allocated = state->AllocatedByteSize();
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> logits = DecodeStep(*state);
    ASSERT_EQ(logits.size(), static_cast<size_t>(config().vocab_size));
    for (const float logit : logits) ASSERT_TRUE(std::isfinite(logit));
  }
  EXPECT_EQ(state->num_tokens(), 203);
  EXPECT_EQ(state->AllocatedByteSize(), allocated);
}

TEST_F(SyntheticHistoryTest, IsDeterministicInItsSeed) {
  const std::string a = model_->SnapshotState(*Synthetic(50, 0, 4));
  const std::string b = model_->SnapshotState(*Synthetic(50, 0, 4));
  const std::string c = model_->SnapshotState(*Synthetic(50, 0, 5));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST_F(SyntheticHistoryTest, SnapshotRoundTripContinuesIdentically) {
  std::unique_ptr<SequenceState> live = Synthetic(130, 1, 6);
  absl::StatusOr<std::unique_ptr<SequenceState>> restored =
      model_->RestoreState(model_->SnapshotState(*live));
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ((*restored)->num_tokens(), 130);
  EXPECT_EQ(DecodeStep(**restored), DecodeStep(*live));
}

TEST_F(SyntheticHistoryTest, LongCachesRepeatOneBlockOfRows) {
  const int64_t length = 2 * kSyntheticBlockRows + 5;
  std::unique_ptr<SequenceState> state = Synthetic(length, 0, 8);
  int64_t mla_layer = 0;
  while (config().IsKda(mla_layer)) ++mla_layer;
  const kernels::LatentPages cache = state->mla(mla_layer).view();
  const int64_t width = config().mla_latent_size();
  const size_t row_bytes = static_cast<size_t>(width) * 4;
  EXPECT_EQ(std::memcmp(cache.Row(0, width), cache.Row(kSyntheticBlockRows, width), row_bytes), 0);
  EXPECT_EQ(std::memcmp(cache.Row(4, width), cache.Row(2 * kSyntheticBlockRows + 4, width), row_bytes), 0);
  EXPECT_NE(std::memcmp(cache.Row(0, width), cache.Row(1, width), row_bytes), 0);
}

// BF16 pages (the CUDA backend's), swizzled by the cache row: pages past the first block, copied
// from its pages where they tile it, read back as the block's rows, rounded; pages of 7 rows do
// not tile it and are uploaded.
TEST(SyntheticHistoryBf16Test, LongCachesRepeatOneBlockOfRows) {
  absl::StatusOr<KimiLinearConfig> config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok());
  config->kv_lora_rank = 96;  // a width of 128: two column groups
  config->qk_rope_head_dim = 32;
  const int64_t width = config->mla_latent_size();
  int64_t layer = 0;
  while (config->IsKda(layer)) ++layer;
  ::deltaserve::testing::CopyingBackend backend(1, kernels::DType::kBF16);
  const int64_t length = 3 * kSyntheticBlockRows + 300;
  std::vector<float> first_block;
  for (const int64_t page_rows : {int64_t{256}, int64_t{64}, int64_t{7}}) {
    SCOPED_TRACE(::testing::Message() << page_rows << " rows a page");
    SequenceState state(*config, backend, 0, config->num_layers, 1, page_rows);
    FillSyntheticHistory(state, length, 0, 3);
    const MlaLayerState& mla = state.mla(layer);
    ASSERT_EQ(mla.dtype, kernels::DType::kBF16);
    ASSERT_EQ(mla.num_cached, length);
    std::vector<float> rows(static_cast<size_t>(length * width));
    mla.ForEachRange(0, length, [&](int64_t first, int64_t n, kernels::TensorView page) {
      DownloadLatentRows(backend, page, first, n, rows.data() + first * width);
    });
    if (first_block.empty()) {
      first_block.assign(rows.begin(), rows.begin() + kSyntheticBlockRows * width);
    }
    for (int64_t row = 0; row < length; ++row) {
      const float* want = first_block.data() + (row % kSyntheticBlockRows) * width;
      for (int64_t e = 0; e < width; ++e) ASSERT_EQ(rows[row * width + e], want[e]) << "row " << row;
    }
  }
  EXPECT_NE(first_block[0], first_block[width]);
}

TEST_F(SyntheticHistoryTest, EmptyHistoryHasNoTokensAndNoCacheRows) {
  std::unique_ptr<SequenceState> synthetic = Synthetic(0, 0, 1);
  EXPECT_EQ(synthetic->num_tokens(), 0);
  std::unique_ptr<SequenceState> fresh = model_->NewState();
  EXPECT_EQ(synthetic->ByteSize(), fresh->ByteSize());
  DecodeStep(*synthetic);
  EXPECT_EQ(synthetic->num_tokens(), 1);
}

}  // namespace
}  // namespace deltaserve::model
