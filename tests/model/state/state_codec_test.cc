// Snapshots round-trip exactly, and every kind of damage or mismatch is refused.
#include "model/state/state_codec.h"

#include <random>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/config/presets.h"
#include "tests/model/state/bf16_latent_rows.h"
#include "tests/testing/copying_backend.h"

namespace deltaserve::model {
namespace {

constexpr uint64_t kFingerprint = 0x1234abcd5678ef00ull;

class StateCodecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<KimiLinearConfig> config = PresetConfig("tiny");
    ASSERT_TRUE(config.ok());
    config_ = *config;
  }

  // A state with random contents: KDA states, conv tails, MLA caches and tokens.
  std::unique_ptr<SequenceState> RandomState(int64_t num_tokens, uint64_t seed) {
    auto state = std::make_unique<SequenceState>(config_, backend_, 0, config_.num_layers, kFingerprint);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    auto fill = [&](kernels::TensorView view) {
      std::vector<float> values(view.numel());
      for (float& v : values) v = normal(rng);
      backend_.Upload(values.data(), view);
    };
    std::vector<int32_t> tokens(num_tokens);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % config_.vocab_size);
    state->AppendTokens(tokens);
    for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
      if (config_.IsKda(layer)) {
        fill(state->kda(layer).recurrent.view());
        for (auto& tail : state->kda(layer).conv_tails) fill(tail.view());
      } else {
        state->ReserveLatent(layer, num_tokens);
        const int64_t page_rows = state->mla(layer).page_rows;  // F32 pages: whole rows
        state->mla(layer).ForEachRange(0, num_tokens, [&](int64_t first, int64_t n, kernels::TensorView page) {
          fill(page.Rows(first % page_rows, n));
        });
        state->mla(layer).num_cached = num_tokens;
      }
    }
    return state;
  }

  absl::StatusOr<std::unique_ptr<SequenceState>> Decode(std::string_view bytes,
                                                        uint64_t fingerprint = kFingerprint) {
    return DecodeState(bytes, config_, backend_, fingerprint, 0, config_.num_layers);
  }

  KimiLinearConfig config_;
  kernels::cpu::CpuBackend backend_{{.num_threads = 1}};
};

TEST_F(StateCodecTest, RoundTripsExactly) {
  for (int64_t tokens : {0, 1, 37}) {
    std::unique_ptr<SequenceState> state = RandomState(tokens, 1 + tokens);
    const std::string bytes = EncodeState(*state);
    absl::StatusOr<std::unique_ptr<SequenceState>> decoded = Decode(bytes);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ((*decoded)->tokens(), state->tokens());
    EXPECT_EQ(EncodeState(**decoded), bytes);
    absl::StatusOr<StateEnvelope> envelope = ReadStateEnvelope(bytes);
    ASSERT_TRUE(envelope.ok());
    EXPECT_EQ(envelope->num_tokens, tokens);
    EXPECT_EQ(envelope->model_fingerprint, kFingerprint);
    EXPECT_EQ(envelope->format_version, kStateFormatVersion);
  }
}

// A backend that keeps BF16 latent pages (the CUDA backend at serving precision) writes them to
// the snapshot widened to F32, which decodes back to the same bits; an F32 state's snapshot
// decodes into such pages rounded to bf16, each row's elements where kernels::LatentOffset puts
// them (a latent width of 128: in column groups, swizzled). Its states hold half the latent bytes.
TEST_F(StateCodecTest, Bf16LatentPagesTravelAsF32) {
  config_.kv_lora_rank = 96;
  config_.qk_rope_head_dim = 32;
  ::deltaserve::testing::CopyingBackend bf16_backend(1, kernels::DType::kBF16);
  constexpr int64_t kTokens = 37;
  std::unique_ptr<SequenceState> state = RandomState(kTokens, 5);
  const std::string f32_bytes = EncodeState(*state);
  absl::StatusOr<std::unique_ptr<SequenceState>> narrowed =
      DecodeState(f32_bytes, config_, bf16_backend, kFingerprint, 0, config_.num_layers);
  ASSERT_TRUE(narrowed.ok()) << narrowed.status();
  const int64_t width = config_.mla_latent_size();
  int64_t mla_layers = 0;
  for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
    if (config_.IsKda(layer)) continue;
    ++mla_layers;
    const MlaLayerState& mla = (*narrowed)->mla(layer);
    ASSERT_EQ(mla.dtype, kernels::DType::kBF16);
    ASSERT_EQ(mla.num_cached, kTokens);
    std::vector<float> expected(static_cast<size_t>(kTokens * width)), got(expected.size());
    const MlaLayerState& source = state->mla(layer);
    source.ForEachRange(0, kTokens, [&](int64_t first, int64_t n, kernels::TensorView page) {
      backend_.Download(page.Rows(first % source.page_rows, n), expected.data() + first * width);
    });
    int64_t moved = 0;  // elements placed away from their place in a row-major page
    mla.ForEachRange(0, kTokens, [&](int64_t first, int64_t n, kernels::TensorView page) {
      ASSERT_EQ(page.dtype, kernels::DType::kBF16);
      DownloadLatentRows(bf16_backend, page, first, n, got.data() + first * width);
      ExpectPlacedByCacheRow(bf16_backend, page, first, n, expected, &moved);
    });
    EXPECT_GT(moved, 0);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i], kernels::BF16ToF32(kernels::F32ToBF16(expected[i]))) << "layer " << layer << " value " << i;
    }
  }
  ASSERT_GT(mla_layers, 0);
  EXPECT_EQ(state->ByteSize() - (*narrowed)->ByteSize(), mla_layers * kTokens * width * 2);
  const std::string bf16_bytes = EncodeState(**narrowed);
  EXPECT_EQ(bf16_bytes.size(), f32_bytes.size());
  absl::StatusOr<std::unique_ptr<SequenceState>> again =
      DecodeState(bf16_bytes, config_, bf16_backend, kFingerprint, 0, config_.num_layers);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(EncodeState(**again), bf16_bytes);
}

// A stage encodes under its lock and seals after it, and verifies before its lock and decodes
// under it: the two halves give EncodeState's bytes, and a decode told the checksum was verified
// gives DecodeState's state.
TEST_F(StateCodecTest, SplitEncodingAndVerifiedDecodingMatchTheWhole) {
  std::unique_ptr<SequenceState> state = RandomState(9, 6);
  const std::string whole = EncodeState(*state);
  std::string sealed = EncodeStateUnsealed(*state);
  EXPECT_EQ(sealed.size() + kStateTrailerBytes, whole.size());
  SealState(sealed);
  EXPECT_EQ(sealed, whole);
  ASSERT_TRUE(ReadStateEnvelope(sealed).ok());
  absl::StatusOr<std::unique_ptr<SequenceState>> decoded =
      DecodeState(sealed, config_, backend_, kFingerprint, 0, config_.num_layers, /*checksum_verified=*/true);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(EncodeState(**decoded), whole);
  // A damaged checksum trailer: refused unless the caller says it verified the bytes itself.
  std::string trailer_damaged = whole;
  trailer_damaged.back() ^= 0x10;
  EXPECT_EQ(ReadStateEnvelope(trailer_damaged).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(Decode(trailer_damaged).ok());
  EXPECT_TRUE(DecodeState(trailer_damaged, config_, backend_, kFingerprint, 0, config_.num_layers,
                          /*checksum_verified=*/true)
                  .ok());
}

TEST_F(StateCodecTest, RefusesAnotherModel) {
  const std::string bytes = EncodeState(*RandomState(3, 2));
  absl::StatusOr<std::unique_ptr<SequenceState>> decoded = Decode(bytes, kFingerprint + 1);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(decoded.status().message().find("another model"), std::string::npos);
}

TEST_F(StateCodecTest, RefusesAnotherFormatVersion) {
  std::string bytes = EncodeState(*RandomState(3, 3));
  bytes[8] = 2;  // the version field follows the 8-byte magic
  absl::StatusOr<std::unique_ptr<SequenceState>> decoded = Decode(bytes);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(decoded.status().message().find("format version 2"), std::string::npos);
}

TEST_F(StateCodecTest, RefusesEveryFlippedByteAndEveryTruncation) {
  const std::string bytes = EncodeState(*RandomState(5, 4));
  // Every byte of the header and tokens, then a stride through the payload, then the checksum.
  std::vector<size_t> positions;
  for (size_t i = 0; i < 100; ++i) positions.push_back(i);
  for (size_t i = 100; i < bytes.size(); i += 97) positions.push_back(i);
  for (size_t i = bytes.size() - 4; i < bytes.size(); ++i) positions.push_back(i);
  for (size_t i : positions) {
    std::string damaged = bytes;
    damaged[i] ^= 0x10;
    EXPECT_FALSE(Decode(damaged).ok()) << "flipped byte " << i;
  }
  for (size_t length : {size_t{0}, size_t{7}, size_t{40}, bytes.size() / 2, bytes.size() - 1}) {
    EXPECT_FALSE(Decode(std::string_view(bytes).substr(0, length)).ok()) << "length " << length;
  }
  EXPECT_FALSE(Decode(bytes + "x").ok());
}

TEST_F(StateCodecTest, RefusesAnotherLayerRange) {
  const std::string bytes = EncodeState(*RandomState(2, 5));
  absl::StatusOr<std::unique_ptr<SequenceState>> decoded =
      DecodeState(bytes, config_, backend_, kFingerprint, 0, 2);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace deltaserve::model
