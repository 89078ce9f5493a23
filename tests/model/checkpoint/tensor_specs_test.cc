// ExpectedTensorSpecs against the public fixture's tensors and the 48B release's counts (spec §6).
#include "model/checkpoint/tensor_specs.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint/safetensors_file.h"
#include "model/config/presets.h"
#include "tests/model/checkpoint/checkpoint_test_util.h"

namespace deltaserve::model {
namespace {

using kernels::DType;
using testing_util::FixtureDir;
using testing_util::FixtureName;
using testing_util::Kimi48BConfig;
using testing_util::TinyConfig;

struct FixtureTensor {
  DType dtype;
  std::vector<int64_t> shape;
};

std::map<std::string, FixtureTensor> FixtureTensors() {
  std::map<std::string, FixtureTensor> tensors;
  for (const char* shard :
       {"/model-00001-of-00002.safetensors", "/model-00002-of-00002.safetensors"}) {
    const auto file = SafetensorsFile::Open(FixtureDir() + shard);
    EXPECT_TRUE(file.ok()) << file.status();
    if (!file.ok()) continue;
    for (const auto& [name, entry] : (*file)->tensors()) {
      tensors[name] = {entry.dtype, entry.shape};
    }
  }
  return tensors;
}

void ExpectMatchesFixture(const KimiLinearConfig& config) {
  const std::map<std::string, FixtureTensor> fixture = FixtureTensors();
  const std::vector<TensorSpec> specs = ExpectedTensorSpecs(config);
  std::set<std::string> seen;
  for (const TensorSpec& spec : specs) {
    const std::string name = FixtureName(spec.name);
    EXPECT_TRUE(seen.insert(name).second) << "listed twice: " << name;
    const auto it = fixture.find(name);
    ASSERT_NE(it, fixture.end()) << "not in the fixture: " << name;
    EXPECT_EQ(spec.shape, it->second.shape) << name;
    EXPECT_EQ(spec.dtype, it->second.dtype) << name;
  }
  EXPECT_EQ(seen.size(), fixture.size());
}

TEST(TensorSpecsTest, LayerTensorName) {
  EXPECT_EQ(LayerTensorName(3, "self_attn.A_log"), "model.layers.3.self_attn.A_log");
  EXPECT_EQ(LayerTensorName(0, "mlp.up_proj.weight"), "model.layers.0.mlp.up_proj.weight");
}

TEST(TensorSpecsTest, MatchesPublicFixture) { ExpectMatchesFixture(TinyConfig()); }

TEST(TensorSpecsTest, MatchesPublicFixtureWithParsedConfig) {
  const auto config = LoadKimiLinearConfig(FixtureDir() + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  ExpectMatchesFixture(*config);
}

TEST(TensorSpecsTest, ReleasePresetHasTheReleaseTensorCount) {
  const auto config = PresetConfig("kimi-linear-48b-a3b");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(ExpectedTensorSpecs(*config).size(), 20493u);
}

TEST(TensorSpecsTest, OrderIsEmbeddingLayersNormHead) {
  const std::vector<TensorSpec> specs = ExpectedTensorSpecs(TinyConfig());
  ASSERT_GE(specs.size(), 3u);
  EXPECT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs.front().role, TensorRole::kEmbedding);
  EXPECT_EQ(specs[1].name, "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(specs[specs.size() - 2].name, "model.norm.weight");
  EXPECT_EQ(specs.back().name, "lm_head.weight");
  EXPECT_EQ(specs.back().role, TensorRole::kLmHead);
}

TEST(TensorSpecsTest, RolesAndDtypes) {
  std::map<std::string, TensorSpec> by_name;
  for (const TensorSpec& spec : ExpectedTensorSpecs(TinyConfig())) by_name[spec.name] = spec;
  const auto role = [&](const std::string& name) { return by_name.at(name).role; };
  EXPECT_EQ(role("model.layers.0.self_attn.A_log"), TensorRole::kALog);
  EXPECT_EQ(by_name.at("model.layers.0.self_attn.A_log").dtype, DType::kF32);
  EXPECT_EQ(role("model.layers.0.self_attn.dt_bias"), TensorRole::kDtBias);
  EXPECT_EQ(by_name.at("model.layers.0.self_attn.dt_bias").dtype, DType::kF32);
  EXPECT_EQ(role("model.layers.1.self_attn.q_conv1d.weight"), TensorRole::kConvWeight);
  EXPECT_EQ(role("model.layers.1.self_attn.o_norm.weight"), TensorRole::kNormWeight);
  EXPECT_EQ(role("model.layers.3.self_attn.kv_a_layernorm.weight"), TensorRole::kNormWeight);
  EXPECT_EQ(role("model.layers.3.post_attention_layernorm.weight"), TensorRole::kNormWeight);
  EXPECT_EQ(role("model.layers.2.block_sparse_moe.gate.weight"), TensorRole::kRouterWeight);
  EXPECT_EQ(role("model.layers.2.block_sparse_moe.gate.e_score_correction_bias"),
            TensorRole::kRouterBias);
  EXPECT_EQ(by_name.at("model.layers.2.block_sparse_moe.gate.e_score_correction_bias").dtype,
            DType::kBF16);
  EXPECT_EQ(role("model.layers.2.block_sparse_moe.experts.7.w2.weight"), TensorRole::kProjection);
  EXPECT_EQ(role("model.layers.0.mlp.down_proj.weight"), TensorRole::kProjection);
}

TEST(TensorSpecsTest, TiedEmbeddingsDropLmHead) {
  KimiLinearConfig config = TinyConfig();
  config.tie_word_embeddings = true;
  const std::vector<TensorSpec> specs = ExpectedTensorSpecs(config);
  for (const TensorSpec& spec : specs) EXPECT_NE(spec.name, "lm_head.weight");
  EXPECT_EQ(specs.back().name, "model.norm.weight");
}

TEST(TensorSpecsTest, NoSharedExpertsDropsThem) {
  KimiLinearConfig config = TinyConfig();
  const size_t with_shared = ExpectedTensorSpecs(config).size();
  config.num_shared_experts = 0;
  const std::vector<TensorSpec> specs = ExpectedTensorSpecs(config);
  EXPECT_EQ(specs.size(), with_shared - 3 * 3);  // three MoE layers
  for (const TensorSpec& spec : specs) {
    EXPECT_THAT(spec.name, ::testing::Not(::testing::HasSubstr("shared_experts")));
  }
}

TEST(TensorSpecsTest, SharedExpertsScaleWithCount) {
  KimiLinearConfig config = TinyConfig();
  config.num_shared_experts = 2;
  for (const TensorSpec& spec : ExpectedTensorSpecs(config)) {
    if (spec.name == "model.layers.1.block_sparse_moe.shared_experts.up_proj.weight") {
      EXPECT_EQ(spec.shape, (std::vector<int64_t>{128, 128}));
    }
    if (spec.name == "model.layers.1.block_sparse_moe.shared_experts.down_proj.weight") {
      EXPECT_EQ(spec.shape, (std::vector<int64_t>{128, 128}));
    }
  }
}

// Spec §6: 20,493 tensors and 49,122,681,728 parameters in the 48B release.
TEST(TensorSpecsTest, Kimi48BCounts) {
  const std::vector<TensorSpec> specs = ExpectedTensorSpecs(Kimi48BConfig());
  EXPECT_EQ(specs.size(), 20493u);
  int64_t params = 0;
  int64_t f32_tensors = 0;
  for (const TensorSpec& spec : specs) {
    int64_t count = 1;
    for (const int64_t dim : spec.shape) count *= dim;
    params += count;
    if (spec.dtype == DType::kF32) ++f32_tensors;
  }
  EXPECT_EQ(params, int64_t{49122681728});
  EXPECT_EQ(f32_tensors, 40);  // A_log and dt_bias of 20 KDA layers
}

}  // namespace
}  // namespace deltaserve::model
