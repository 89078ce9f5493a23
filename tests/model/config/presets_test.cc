// The built-in presets: valid, round-trip through config.json, and carry the documented shapes.
#include "model/config/presets.h"

#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/config/config_test_util.h"

namespace deltaserve::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

KimiLinearConfig PresetOrDie(const std::string& name) {
  absl::StatusOr<KimiLinearConfig> config = PresetConfig(name);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : KimiLinearConfig{};
}

// Parameter count from the tensor shapes of spec §6 (checked there against the release).
int64_t ParameterCount(const KimiLinearConfig& c) {
  const int64_t d = c.hidden_size;
  const int64_t p = c.kda_projection_size();
  const int64_t kda = 3 * p * d + 3 * p * c.conv_kernel_size + 2 * (c.kda_head_dim * d) +
                      2 * (p * c.kda_head_dim) + c.kda_num_heads + p + c.kda_num_heads * d +
                      c.kda_head_dim + d * p;
  const int64_t h = c.mla_num_heads;
  const int64_t mla = h * c.mla_qk_head_dim() * d + c.mla_latent_size() * d + c.kv_lora_rank +
                      h * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank +
                      d * h * c.v_head_dim;
  const int64_t moe = c.num_experts * d + c.num_experts +
                      c.num_experts * 3 * d * c.moe_intermediate_size +
                      3 * d * c.moe_intermediate_size * c.num_shared_experts;
  const int64_t dense = 3 * d * c.intermediate_size;
  int64_t total = c.vocab_size * d * (c.tie_word_embeddings ? 1 : 2) + d;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    total += 2 * d + (c.IsKda(i) ? kda : mla) + (c.IsMoe(i) ? moe : dense);
  }
  return total;
}

TEST(PresetsTest, NamesAreListedAndEachPresetIsValid) {
  EXPECT_THAT(PresetNames(), ElementsAre("tiny", "small", "small-all-mla", "kimi-linear-48b-a3b",
                                         "kimi-linear-48b-a3b-all-mla"));
  for (const std::string& name : PresetNames()) {
    SCOPED_TRACE(name);
    const KimiLinearConfig config = PresetOrDie(name);
    EXPECT_TRUE(config.Validate().ok()) << config.Validate();
  }
}

TEST(PresetsTest, EveryPresetRoundTripsThroughOfficialJson) {
  for (const std::string& name : PresetNames()) {
    SCOPED_TRACE(name);
    const KimiLinearConfig config = PresetOrDie(name);
    const std::string json = ToOfficialConfigJson(config);
    absl::StatusOr<KimiLinearConfig> parsed = ParseKimiLinearConfig(json, name + ".json");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(ToOfficialConfigJson(*parsed), json);
    EXPECT_TRUE(*parsed == config);
    EXPECT_EQ(ConfigFingerprint(*parsed), ConfigFingerprint(config));
  }
}

TEST(PresetsTest, FingerprintsDiffer) {
  std::set<uint64_t> fingerprints;
  for (const std::string& name : PresetNames()) {
    fingerprints.insert(ConfigFingerprint(PresetOrDie(name)));
  }
  EXPECT_EQ(fingerprints.size(), PresetNames().size());
}

TEST(PresetsTest, TinyIsThePublicFixture) {
  absl::StatusOr<KimiLinearConfig> fixture = LoadKimiLinearConfig(testing::TinyFixturePath());
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  const KimiLinearConfig tiny = PresetOrDie("tiny");
  EXPECT_EQ(ToOfficialConfigJson(tiny), ToOfficialConfigJson(*fixture));
  EXPECT_TRUE(tiny == *fixture);
}

TEST(PresetsTest, SmallHasTheDemoShape) {
  const KimiLinearConfig c = PresetOrDie("small");
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.num_layers, 8);
  using M = MixerKind;
  EXPECT_THAT(c.mixer_kinds,
              ElementsAre(M::kKda, M::kKda, M::kKda, M::kMla, M::kKda, M::kKda, M::kKda, M::kMla));
  EXPECT_EQ(c.ffn_kinds[0], FfnKind::kDense);
  for (int64_t i = 1; i < 8; ++i) EXPECT_TRUE(c.IsMoe(i)) << i;
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.kda_num_heads, 8);
  EXPECT_EQ(c.kda_head_dim, 64);
  EXPECT_EQ(c.conv_kernel_size, 4);
  EXPECT_EQ(c.mla_num_heads, 8);
  EXPECT_EQ(c.kv_lora_rank, 128);
  EXPECT_EQ(c.qk_nope_head_dim, 64);
  EXPECT_EQ(c.qk_rope_head_dim, 32);
  EXPECT_EQ(c.v_head_dim, 64);
  EXPECT_EQ(c.num_experts, 32);
  EXPECT_EQ(c.num_experts_per_token, 4);
  EXPECT_EQ(c.moe_intermediate_size, 256);
  EXPECT_EQ(c.num_shared_experts, 1);
  EXPECT_EQ(c.num_expert_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.446);
  EXPECT_EQ(c.max_position_embeddings, 1048576);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(2));
  EXPECT_EQ(c.pad_token_id, 0);
}

TEST(PresetsTest, Kimi48bMatchesTheRelease) {
  const KimiLinearConfig c = PresetOrDie("kimi-linear-48b-a3b");
  EXPECT_EQ(c.vocab_size, 163840);
  EXPECT_EQ(c.hidden_size, 2304);
  EXPECT_EQ(c.num_layers, 27);
  EXPECT_EQ(c.intermediate_size, 9216);
  EXPECT_EQ(c.bos_token_id, 163584);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(163586));
  EXPECT_EQ(c.pad_token_id, 163839);
  EXPECT_EQ(c.mla_num_heads, 32);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.kda_num_heads, 32);
  EXPECT_EQ(c.kda_head_dim, 128);
  EXPECT_EQ(c.num_experts, 256);
  EXPECT_EQ(c.num_experts_per_token, 8);
  EXPECT_EQ(c.moe_intermediate_size, 1024);
  // Spec §1 layer map: 1-based full_attn_layers [4,8,12,16,20,24,27].
  std::vector<int64_t> full_attn_one_based;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    if (!c.IsKda(i)) full_attn_one_based.push_back(i + 1);
  }
  EXPECT_THAT(full_attn_one_based, ElementsAre(4, 8, 12, 16, 20, 24, 27));
  EXPECT_FALSE(c.IsMoe(0));
  for (int64_t i = 1; i < c.num_layers; ++i) EXPECT_TRUE(c.IsMoe(i)) << i;
  // The spec's cross-check against the checkpoint's tensor dump.
  EXPECT_EQ(ParameterCount(c), int64_t{49'122'681'728});
}

TEST(PresetsTest, AllMlaVariantsDifferFromTheirShapeOnlyInTheMixers) {
  for (const std::string base : {"small", "kimi-linear-48b-a3b"}) {
    SCOPED_TRACE(base);
    const KimiLinearConfig all_mla = PresetOrDie(base + "-all-mla");
    KimiLinearConfig expected = PresetOrDie(base);
    expected.mixer_kinds.assign(static_cast<size_t>(expected.num_layers), MixerKind::kMla);
    EXPECT_TRUE(all_mla == expected);
    // Written as the release's layer lists with no KDA layer at all.
    const std::string json = ToOfficialConfigJson(all_mla);
    EXPECT_THAT(json, HasSubstr("\"kda_layers\": []"));
  }
  // The release's 20 KDA layers (39,514,272 parameters each) become MLA (29,114,880 each).
  EXPECT_EQ(ParameterCount(PresetOrDie("kimi-linear-48b-a3b-all-mla")), int64_t{48'914'693'888});
}

TEST(PresetsTest, UnknownNameIsInvalidArgument) {
  const absl::StatusOr<KimiLinearConfig> config = PresetConfig("kimi-huge");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("kimi-huge"));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("tiny"));
}

}  // namespace
}  // namespace deltaserve::model
