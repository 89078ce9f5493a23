// Parsing both config.json dialects, defaults, aliases, round trips, fingerprints and file loading.
#include "model/config/kimi_linear_config.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model/config/config_test_util.h"

namespace deltaserve::model {
namespace {

using ::testing::HasSubstr;
using testing::kTinyTransformersJson;
using testing::ReadFileOrDie;
using ::testing::StartsWith;
using testing::TinyFixturePath;

constexpr char kSource[] = "test/config.json";

KimiLinearConfig ParseOrDie(const std::string& text) {
  absl::StatusOr<KimiLinearConfig> config = ParseKimiLinearConfig(text, kSource);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : KimiLinearConfig{};
}

KimiLinearConfig TinyFromFixture() { return ParseOrDie(ReadFileOrDie(TinyFixturePath())); }

nlohmann::json FixtureJson() { return nlohmann::json::parse(ReadFileOrDie(TinyFixturePath())); }

// Compares as structs and, for a readable failure, as official JSON.
void ExpectSameConfig(const KimiLinearConfig& actual, const KimiLinearConfig& expected) {
  EXPECT_EQ(ToOfficialConfigJson(actual), ToOfficialConfigJson(expected));
  EXPECT_TRUE(actual == expected);
}

TEST(KimiLinearConfigTest, PublicFixtureParses) {
  const KimiLinearConfig c = TinyFromFixture();
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.intermediate_size, 256);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 1048576);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>({2}));
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_EQ(c.mla_num_heads, 2);
  EXPECT_EQ(c.kv_lora_rank, 32);
  EXPECT_EQ(c.qk_nope_head_dim, 16);
  EXPECT_EQ(c.qk_rope_head_dim, 8);
  EXPECT_EQ(c.v_head_dim, 16);
  EXPECT_DOUBLE_EQ(c.kv_a_layernorm_eps, 1e-6);
  EXPECT_EQ(c.kda_num_heads, 2);
  EXPECT_EQ(c.kda_head_dim, 32);  // linear_attn_config.head_dim, not the top-level 64
  EXPECT_EQ(c.conv_kernel_size, 4);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_token, 2);
  EXPECT_EQ(c.num_shared_experts, 1);
  EXPECT_EQ(c.moe_intermediate_size, 64);
  EXPECT_EQ(c.num_expert_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_TRUE(c.moe_renormalize);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.446);
  EXPECT_EQ(c.mixer_kinds, std::vector<MixerKind>({MixerKind::kKda, MixerKind::kKda,
                                                   MixerKind::kKda, MixerKind::kMla}));
  EXPECT_EQ(c.ffn_kinds,
            std::vector<FfnKind>({FfnKind::kDense, FfnKind::kMoe, FfnKind::kMoe, FfnKind::kMoe}));
  EXPECT_TRUE(c.IsKda(0));
  EXPECT_FALSE(c.IsKda(3));
  EXPECT_FALSE(c.IsMoe(0));
  EXPECT_TRUE(c.IsMoe(1));
  EXPECT_EQ(c.kda_projection_size(), 64);
  EXPECT_EQ(c.mla_qk_head_dim(), 24);
  EXPECT_EQ(c.mla_latent_size(), 40);
  EXPECT_TRUE(c.Validate().ok());
}

TEST(KimiLinearConfigTest, LoadReadsTheFixture) {
  absl::StatusOr<KimiLinearConfig> loaded = LoadKimiLinearConfig(TinyFixturePath());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameConfig(*loaded, TinyFromFixture());
}

TEST(KimiLinearConfigTest, TransformersDialectMatchesOfficial) {
  ExpectSameConfig(ParseOrDie(kTinyTransformersJson), TinyFromFixture());
}

TEST(KimiLinearConfigTest, TransformersAliasesMatchCanonicalNames) {
  nlohmann::json j = nlohmann::json::parse(kTinyTransformersJson);
  const std::vector<std::pair<std::string, std::string>> aliases = {
      {"num_experts", "num_local_experts"},
      {"num_experts_per_token", "num_experts_per_tok"},
      {"num_shared_experts", "n_shared_experts"},
      {"moe_renormalize", "norm_topk_prob"},
      {"num_expert_group", "n_group"},
      {"model_max_length", "max_position_embeddings"}};
  for (const auto& [canonical, alias] : aliases) {
    j[alias] = j[canonical];
    j.erase(canonical);
  }
  ExpectSameConfig(ParseOrDie(j.dump()), TinyFromFixture());
}

TEST(KimiLinearConfigTest, AliasesThatAgreeWithCanonicalNamesAreAccepted) {
  nlohmann::json j = FixtureJson();
  j["num_local_experts"] = 8;
  j["n_group"] = 1;
  j["norm_topk_prob"] = true;
  j["max_position_embeddings"] = 1048576;
  ExpectSameConfig(ParseOrDie(j.dump()), TinyFromFixture());
}

TEST(KimiLinearConfigTest, BothDialectsInOneFileAreAcceptedWhenTheyAgree) {
  // What transformers saves after loading the official file: both spellings of each fact.
  nlohmann::json j = nlohmann::json::parse(kTinyTransformersJson);
  const nlohmann::json fixture = FixtureJson();
  j["linear_attn_config"] = fixture["linear_attn_config"];
  j["first_k_dense_replace"] = 1;
  j["moe_layer_freq"] = 1;
  ExpectSameConfig(ParseOrDie(j.dump()), TinyFromFixture());
}

TEST(KimiLinearConfigTest, LinearAttnConfigInsideTransformersFileSuppliesKdaFields) {
  nlohmann::json j = nlohmann::json::parse(kTinyTransformersJson);
  j.erase("linear_num_heads");
  j.erase("linear_head_dim");
  j.erase("linear_conv_kernel_dim");
  j.erase("layer_types");
  j["linear_attn_config"] = FixtureJson()["linear_attn_config"];
  ExpectSameConfig(ParseOrDie(j.dump()), TinyFromFixture());
}

TEST(KimiLinearConfigTest, SemanticFieldsTakeTransformersDefaults) {
  nlohmann::json j = FixtureJson();
  for (const char* key :
       {"rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
        "model_max_length", "moe_renormalize", "num_expert_group", "topk_group",
        "routed_scaling_factor", "first_k_dense_replace", "moe_layer_freq", "use_grouped_topk",
        "model_type", "hidden_act", "q_lora_rank", "mla_use_nope", "moe_router_activation_func",
        "num_nextn_predict_layers"}) {
    j.erase(key);
  }
  j["linear_attn_config"].erase("short_conv_kernel_size");
  const KimiLinearConfig c = ParseOrDie(j.dump());
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.pad_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.max_position_embeddings, 0);
  EXPECT_TRUE(c.moe_renormalize);
  EXPECT_EQ(c.num_expert_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.446);
  EXPECT_EQ(c.conv_kernel_size, 4);
  EXPECT_EQ(c.ffn_kinds, TinyFromFixture().ffn_kinds);  // first_k_dense_replace defaults to 1
}

TEST(KimiLinearConfigTest, TokenIdsMayBeNullOrLists) {
  nlohmann::json j = FixtureJson();
  j["eos_token_id"] = {2, 7, 9};
  j["bos_token_id"] = nullptr;
  j["pad_token_id"] = nullptr;
  KimiLinearConfig c = ParseOrDie(j.dump());
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>({2, 7, 9}));
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.pad_token_id, -1);
  j["eos_token_id"] = nullptr;
  c = ParseOrDie(j.dump());
  EXPECT_TRUE(c.eos_token_ids.empty());
}

TEST(KimiLinearConfigTest, UngroupedTopkIgnoresGroupFields) {
  nlohmann::json j = FixtureJson();
  j["use_grouped_topk"] = false;
  j["num_expert_group"] = 4;
  j["topk_group"] = 2;
  const KimiLinearConfig c = ParseOrDie(j.dump());
  EXPECT_EQ(c.num_expert_group, 1);
  EXPECT_EQ(c.topk_group, 1);
}

TEST(KimiLinearConfigTest, GroupedTopkIsRead) {
  nlohmann::json j = FixtureJson();
  j["num_expert_group"] = 4;
  j["topk_group"] = 2;
  j["num_experts_per_token"] = 4;
  const KimiLinearConfig c = ParseOrDie(j.dump());
  EXPECT_EQ(c.num_expert_group, 4);
  EXPECT_EQ(c.topk_group, 2);
}

TEST(KimiLinearConfigTest, OfficialFfnRuleHonoursMoeLayerFreqAndExperts) {
  nlohmann::json j = FixtureJson();
  j["num_hidden_layers"] = 8;
  j["linear_attn_config"]["kda_layers"] = {1, 2, 3, 5, 6, 7};
  j["linear_attn_config"]["full_attn_layers"] = {4, 8};
  j["first_k_dense_replace"] = 3;
  j["moe_layer_freq"] = 2;
  KimiLinearConfig c = ParseOrDie(j.dump());
  using F = FfnKind;
  EXPECT_EQ(c.ffn_kinds, std::vector<FfnKind>({F::kDense, F::kDense, F::kDense, F::kDense, F::kMoe,
                                               F::kDense, F::kMoe, F::kDense}));
  j["num_experts"] = 0;  // no experts: every layer is dense, whatever the rule fields say
  c = ParseOrDie(j.dump());
  EXPECT_EQ(c.ffn_kinds, std::vector<FfnKind>(8, FfnKind::kDense));
}

TEST(KimiLinearConfigTest, MlpLayerTypesInOfficialFileIsHonoured) {
  nlohmann::json j = FixtureJson();
  j.erase("first_k_dense_replace");
  j.erase("moe_layer_freq");
  j["mlp_layer_types"] = {"sparse", "dense", "sparse", "dense"};
  const KimiLinearConfig c = ParseOrDie(j.dump());
  EXPECT_EQ(c.ffn_kinds,
            std::vector<FfnKind>({FfnKind::kMoe, FfnKind::kDense, FfnKind::kMoe, FfnKind::kDense}));
}

TEST(KimiLinearConfigTest, HeadDimAtTopLevelIsNotTheKdaHeadDim) {
  nlohmann::json j = nlohmann::json::parse(kTinyTransformersJson);
  j["head_dim"] = 999;
  EXPECT_EQ(ParseOrDie(j.dump()).kda_head_dim, 32);
}

// Round trips of configs that exercise the writer's less common branches (presets: presets_test).
TEST(KimiLinearConfigTest, RoundTripThroughOfficialJson) {
  std::vector<KimiLinearConfig> configs;
  KimiLinearConfig c = TinyFromFixture();
  configs.push_back(c);
  c.eos_token_ids = {2, 5};
  c.bos_token_id = -1;
  c.pad_token_id = -1;
  c.max_position_embeddings = 0;
  c.tie_word_embeddings = true;
  c.kv_a_layernorm_eps = 1e-5;
  c.rms_norm_eps = 1e-6;
  c.routed_scaling_factor = 1.0 / 3.0;
  c.moe_renormalize = false;
  configs.push_back(c);
  c.eos_token_ids.clear();
  c.ffn_kinds = {FfnKind::kMoe, FfnKind::kDense, FfnKind::kMoe, FfnKind::kMoe};  // no rule
  c.mixer_kinds = {MixerKind::kMla, MixerKind::kKda, MixerKind::kMla, MixerKind::kKda};
  configs.push_back(c);
  c.ffn_kinds = {FfnKind::kDense, FfnKind::kDense, FfnKind::kMoe, FfnKind::kDense};  // k=2, f=2
  configs.push_back(c);
  c.ffn_kinds.assign(4, FfnKind::kDense);  // all dense with experts present
  configs.push_back(c);
  c.num_experts = 0;
  configs.push_back(c);
  c = TinyFromFixture();
  c.num_expert_group = 4;
  c.topk_group = 2;
  configs.push_back(c);

  for (size_t i = 0; i < configs.size(); ++i) {
    SCOPED_TRACE("config " + std::to_string(i));
    ASSERT_TRUE(configs[i].Validate().ok()) << configs[i].Validate();
    const std::string json = ToOfficialConfigJson(configs[i]);
    ExpectSameConfig(ParseOrDie(json), configs[i]);
  }
}

TEST(KimiLinearConfigTest, OfficialJsonLooksLikeTheRelease) {
  const nlohmann::json written = nlohmann::json::parse(ToOfficialConfigJson(TinyFromFixture()));
  const nlohmann::json fixture = FixtureJson();
  for (const auto& [key, value] : fixture.items()) {
    if (key == "dtype" || key == "initializer_range" || key == "use_cache" || key == "rope_theta" ||
        key == "rope_scaling" || key == "transformers_version") {
      continue;  // not part of the struct
    }
    SCOPED_TRACE(key);
    ASSERT_TRUE(written.contains(key));
    EXPECT_EQ(written[key], value);
  }
  EXPECT_FALSE(written.contains("mlp_layer_types"));
}

TEST(KimiLinearConfigTest, FingerprintIsStableAndDialectIndependent) {
  const KimiLinearConfig tiny = TinyFromFixture();
  EXPECT_EQ(ConfigFingerprint(tiny), ConfigFingerprint(TinyFromFixture()));
  EXPECT_EQ(ConfigFingerprint(tiny), ConfigFingerprint(ParseOrDie(kTinyTransformersJson)));
  // Golden value: a change here invalidates persisted state; bump the serialization tag.
  EXPECT_EQ(ConfigFingerprint(tiny), 0x9a99e784d9cde5abULL);
}

TEST(KimiLinearConfigTest, FingerprintSeesForwardPassFieldsOnly) {
  const KimiLinearConfig tiny = TinyFromFixture();
  const uint64_t base = ConfigFingerprint(tiny);
  const std::vector<void (*)(KimiLinearConfig&)> changes = {
      [](KimiLinearConfig& c) { c.hidden_size = 256; },
      [](KimiLinearConfig& c) { c.rms_norm_eps = 1e-6; },
      [](KimiLinearConfig& c) { c.kv_a_layernorm_eps = 1e-5; },
      [](KimiLinearConfig& c) { c.tie_word_embeddings = true; },
      [](KimiLinearConfig& c) { c.kda_head_dim = 64; },
      [](KimiLinearConfig& c) { c.conv_kernel_size = 3; },
      [](KimiLinearConfig& c) { c.num_experts_per_token = 3; },
      [](KimiLinearConfig& c) { c.moe_renormalize = false; },
      [](KimiLinearConfig& c) { c.routed_scaling_factor = 2.5; },
      [](KimiLinearConfig& c) { c.mixer_kinds[0] = MixerKind::kMla; },
      [](KimiLinearConfig& c) { c.ffn_kinds[0] = FfnKind::kMoe; },
  };
  for (size_t i = 0; i < changes.size(); ++i) {
    KimiLinearConfig changed = tiny;
    changes[i](changed);
    EXPECT_NE(ConfigFingerprint(changed), base) << "change " << i;
  }
  KimiLinearConfig tokens_only = tiny;
  tokens_only.eos_token_ids = {3};
  tokens_only.bos_token_id = -1;
  tokens_only.max_position_embeddings = 4096;
  EXPECT_EQ(ConfigFingerprint(tokens_only), base);
}

TEST(KimiLinearConfigTest, LoadMissingFileIsNotFound) {
  const std::string path = std::string(DELTASERVE_TEST_DATA_DIR) + "/no-such-dir/config.json";
  const absl::StatusOr<KimiLinearConfig> config = LoadKimiLinearConfig(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(config.status().message()), StartsWith(path));
}

TEST(KimiLinearConfigTest, LoadDirectoryIsInvalidArgument) {
  const std::string path = DELTASERVE_TEST_DATA_DIR;
  const absl::StatusOr<KimiLinearConfig> config = LoadKimiLinearConfig(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(path));
}

TEST(KimiLinearConfigTest, ValidateChecksVectorSizes) {
  KimiLinearConfig c = TinyFromFixture();
  c.mixer_kinds.pop_back();
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("mixer_kinds"));
  c = TinyFromFixture();
  c.ffn_kinds.push_back(FfnKind::kDense);
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("ffn_kinds"));
  c = TinyFromFixture();
  c.num_experts = 0;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("num_experts"));
  EXPECT_FALSE(KimiLinearConfig{}.Validate().ok());
}

}  // namespace
}  // namespace deltaserve::model
