// Files ParseKimiLinearConfig must refuse: each is InvalidArgument, starts with the source path and
// names the offending field.
#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/kimi_linear_config.h"
#include "nlohmann/json.hpp"
#include "tests/model/config/config_test_util.h"

namespace deltaserve::model {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Json = nlohmann::json;

constexpr char kSource[] = "bad/config.json";

struct RejectCase {
  std::string name;
  std::function<void(Json&)> mutate;
  std::vector<std::string> message_parts;  // each must appear in the message
  bool transformers_dialect = false;       // start from the transformers twin of the fixture
};

void ExpectRejected(const std::string& text, const std::vector<std::string>& message_parts) {
  const absl::StatusOr<KimiLinearConfig> config = ParseKimiLinearConfig(text, kSource);
  ASSERT_FALSE(config.ok()) << "accepted:\n" << text;
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
  const std::string message(config.status().message());
  EXPECT_THAT(message, StartsWith(std::string(kSource) + ": "));
  for (const std::string& part : message_parts) EXPECT_THAT(message, HasSubstr(part));
}

class RejectTest : public ::testing::TestWithParam<RejectCase> {};

TEST_P(RejectTest, IsInvalidArgumentNamingTheField) {
  const RejectCase& c = GetParam();
  Json j = Json::parse(c.transformers_dialect ? std::string(testing::kTinyTransformersJson)
                                              : testing::ReadFileOrDie(testing::TinyFixturePath()));
  c.mutate(j);
  ExpectRejected(j.dump(), c.message_parts);
}

Json& Linear(Json& j) { return j["linear_attn_config"]; }

const std::vector<RejectCase>& Cases() {
  static const auto* const kCases = new std::vector<RejectCase>{
      // Missing shape fields.
      {"MissingVocab", [](Json& j) { j.erase("vocab_size"); }, {"vocab_size", "missing"}},
      {"MissingHidden", [](Json& j) { j.erase("hidden_size"); }, {"hidden_size", "missing"}},
      {"MissingLayers", [](Json& j) { j.erase("num_hidden_layers"); }, {"num_hidden_layers"}},
      {"MissingKvLoraRank", [](Json& j) { j.erase("kv_lora_rank"); }, {"kv_lora_rank"}},
      {"MissingVHeadDim", [](Json& j) { j.erase("v_head_dim"); }, {"v_head_dim"}},
      {"MissingIntermediate", [](Json& j) { j.erase("intermediate_size"); }, {"intermediate_size"}},
      {"MissingMoeIntermediate",
       [](Json& j) { j.erase("moe_intermediate_size"); },
       {"moe_intermediate_size"}},
      {"MissingExperts",
       [](Json& j) { j.erase("num_experts"); },
       {"num_experts (or num_local_experts)", "missing"}},
      {"MissingKdaHeads",
       [](Json& j) { Linear(j).erase("num_heads"); },
       {"linear_attn_config.num_heads (or linear_num_heads)", "missing"}},
      {"MissingKdaHeadDim",
       [](Json& j) { Linear(j).erase("head_dim"); },
       {"linear_attn_config.head_dim (or linear_head_dim)"}},
      {"MissingLayerMap",
       [](Json& j) {
         Linear(j).erase("kda_layers");
         Linear(j).erase("full_attn_layers");
       },
       {"layer_types", "kda_layers"}},
      {"MissingLinearHeadsTransformers",
       [](Json& j) { j.erase("linear_num_heads"); },
       {"linear_num_heads", "missing"},
       true},
      {"MissingLayerTypesTransformers",
       [](Json& j) { j.erase("layer_types"); },
       {"layer_types", "missing"},
       true},
      // Wrong JSON types.
      {"HiddenAsString",
       [](Json& j) { j["hidden_size"] = "128"; },
       {"hidden_size", "expected an integer", "got string \"128\""}},
      {"HiddenAsFloat",
       [](Json& j) { j["hidden_size"] = 128.0; },
       {"hidden_size", "got float 128.0"}},
      {"HiddenAsNull", [](Json& j) { j["hidden_size"] = nullptr; }, {"hidden_size", "got null"}},
      {"ExpertsAsBool", [](Json& j) { j["num_experts"] = true; }, {"num_experts", "boolean"}},
      {"EpsAsString", [](Json& j) { j["rms_norm_eps"] = "1e-5"; }, {"rms_norm_eps", "string"}},
      {"TieAsString",
       [](Json& j) { j["tie_word_embeddings"] = "false"; },
       {"tie_word_embeddings", "expected a boolean"}},
      {"LinearAttnConfigAsArray",
       [](Json& j) { j["linear_attn_config"] = Json::array(); },
       {"linear_attn_config", "expected an object"}},
      {"KdaLayersAsString",
       [](Json& j) { Linear(j)["kda_layers"] = "1,2,3"; },
       {"linear_attn_config.kda_layers", "string"}},
      {"KdaHeadsAsFloat",
       [](Json& j) { Linear(j)["num_heads"] = 2.5; },
       {"linear_attn_config.num_heads", "float 2.5"}},
      {"EosAsString", [](Json& j) { j["eos_token_id"] = "2"; }, {"eos_token_id"}},
      {"EosListWithFloat",
       [](Json& j) {
         j["eos_token_id"] = {2, 3.5};
       },
       {"eos_token_id"}},
      {"LayerTypesNotList",
       [](Json& j) { j["layer_types"] = "linear_attention"; },
       {"layer_types"},
       true},
      // Zero, negative and absurd dimensions.
      {"ZeroHidden", [](Json& j) { j["hidden_size"] = 0; }, {"hidden_size", "got integer 0"}},
      {"NegativeVocab", [](Json& j) { j["vocab_size"] = -1; }, {"vocab_size", "got integer -1"}},
      {"ZeroLayers", [](Json& j) { j["num_hidden_layers"] = 0; }, {"num_hidden_layers"}},
      {"NegativeKvLoraRank", [](Json& j) { j["kv_lora_rank"] = -32; }, {"kv_lora_rank"}},
      {"ZeroMlaHeads", [](Json& j) { j["num_attention_heads"] = 0; }, {"num_attention_heads"}},
      {"ZeroKdaHeads",
       [](Json& j) { Linear(j)["num_heads"] = 0; },
       {"linear_attn_config.num_heads"}},
      {"ZeroConv",
       [](Json& j) { Linear(j)["short_conv_kernel_size"] = 0; },
       {"short_conv_kernel_size"}},
      {"ZeroMoeIntermediate",
       [](Json& j) { j["moe_intermediate_size"] = 0; },
       {"moe_intermediate_size"}},
      {"ZeroEps", [](Json& j) { j["rms_norm_eps"] = 0.0; }, {"rms_norm_eps"}},
      {"HugeHidden",
       [](Json& j) { j["hidden_size"] = 1 << 20; },
       {"hidden_size", "65536", "1048576"}},
      {"HugeVocab", [](Json& j) { j["vocab_size"] = int64_t{1} << 40; }, {"vocab_size"}},
      {"HugeExperts", [](Json& j) { j["num_experts"] = 1 << 20; }, {"num_experts"}},
      {"HugeLayers", [](Json& j) { j["num_hidden_layers"] = 100000; }, {"num_hidden_layers"}},
      {"Uint64Overflow", [](Json& j) { j["hidden_size"] = ~uint64_t{0}; }, {"hidden_size"}},
      // Layer lists.
      {"LayerGap",
       [](Json& j) {
         Linear(j)["kda_layers"] = {1, 2};
       },
       {"kda_layers", "full_attn_layers", "layer 3 in neither"}},
      {"LayerDuplicateInOneList",
       [](Json& j) {
         Linear(j)["kda_layers"] = {1, 2, 2, 3};
       },
       {"linear_attn_config.kda_layers", "layer 2 again"}},
      {"LayerInBothLists",
       [](Json& j) {
         Linear(j)["kda_layers"] = {1, 2, 3, 4};
       },
       {"linear_attn_config.full_attn_layers", "layer 4 again"}},
      {"LayerOutOfRange",
       [](Json& j) { Linear(j)["full_attn_layers"] = {5}; },
       {"linear_attn_config.full_attn_layers", "[1, 4]", "integer 5"}},
      {"LayerZeroBased",
       [](Json& j) {
         Linear(j)["kda_layers"] = {0, 1, 2};
       },
       {"linear_attn_config.kda_layers", "integer 0"}},
      {"OnlyKdaLayersGiven",
       [](Json& j) { Linear(j).erase("full_attn_layers"); },
       {"linear_attn_config.full_attn_layers"}},
      {"LayerTypesWrongLength",
       [](Json& j) {
         j["layer_types"] = {"linear_attention", "full_attention"};
       },
       {"layer_types", "a list of 2"},
       true},
      {"LayerTypesUnknownValue",
       [](Json& j) { j["layer_types"][1] = "sliding_attention"; },
       {"layer_types", "sliding_attention"},
       true},
      {"MlpLayerTypesUnknownValue",
       [](Json& j) { j["mlp_layer_types"][0] = "moe"; },
       {"mlp_layer_types", "\"moe\""},
       true},
      // One fact spelled two ways, disagreeing.
      {"LayerTypesVsLayerLists",
       [](Json& j) {
         j["layer_types"] = {"linear_attention", "full_attention", "linear_attention",
                             "linear_attention"};
       },
       {"layer_types", "index 1"}},
      {"ExpertsVsLocalExperts",
       [](Json& j) { j["num_local_experts"] = 16; },
       {"num_local_experts", "num_experts", "16"}},
      {"TopkVsAlias", [](Json& j) { j["num_experts_per_tok"] = 4; }, {"num_experts_per_tok"}},
      {"SharedVsAlias", [](Json& j) { j["n_shared_experts"] = 2; }, {"n_shared_experts"}},
      {"RenormalizeVsAlias", [](Json& j) { j["norm_topk_prob"] = false; }, {"norm_topk_prob"}},
      {"GroupVsAlias", [](Json& j) { j["n_group"] = 2; }, {"n_group", "num_expert_group"}},
      {"MaxLengthVsAlias",
       [](Json& j) { j["max_position_embeddings"] = 4096; },
       {"max_position_embeddings", "model_max_length"}},
      {"LinearHeadsVsLinearAttnConfig",
       [](Json& j) {
         j["linear_attn_config"] = {{"num_heads", 4}};
       },
       {"linear_num_heads", "linear_attn_config.num_heads"},
       true},
      {"LinearHeadDimVsLinearAttnConfig",
       [](Json& j) {
         j["linear_attn_config"] = {{"head_dim", 16}};
       },
       {"linear_head_dim"},
       true},
      {"ConvVsLinearAttnConfig",
       [](Json& j) {
         j["linear_attn_config"] = {{"short_conv_kernel_size", 3}};
       },
       {"linear_conv_kernel_dim"},
       true},
      {"MlpLayerTypesVsFirstKDense",
       [](Json& j) {
         j["mlp_layer_types"] = {"dense", "dense", "sparse", "sparse"};
       },
       {"mlp_layer_types", "first_k_dense_replace", "index 1"}},
      // Unsupported values.
      {"QLoraRankSet", [](Json& j) { j["q_lora_rank"] = 64; }, {"q_lora_rank", "expected null"}},
      {"HiddenActGelu",
       [](Json& j) { j["hidden_act"] = "gelu"; },
       {"hidden_act", "\"silu\"", "\"gelu\""}},
      {"OtherModelType", [](Json& j) { j["model_type"] = "deepseek_v3"; }, {"model_type"}},
      {"MlaWithRope", [](Json& j) { j["mla_use_nope"] = false; }, {"mla_use_nope"}},
      {"SoftmaxRouter",
       [](Json& j) { j["moe_router_activation_func"] = "softmax"; },
       {"moe_router_activation_func", "softmax"}},
      {"NextnLayers",
       [](Json& j) { j["num_nextn_predict_layers"] = 1; },
       {"num_nextn_predict_layers"}},
      {"AttentionBias", [](Json& j) { j["attention_bias"] = true; }, {"attention_bias"}, true},
      {"GateLowerBound",
       [](Json& j) { Linear(j)["gate_lower_bound"] = -5.0; },
       {"linear_attn_config.gate_lower_bound"}},
      {"GroupedValueHeads",
       [](Json& j) { Linear(j)["num_v_heads"] = 4; },
       {"linear_attn_config.num_v_heads", "4"}},
      {"ExpandV", [](Json& j) { Linear(j)["expand_v"] = 2; }, {"linear_attn_config.expand_v"}},
      // Cross-field consistency (Validate).
      {"TopkAboveExperts",
       [](Json& j) { j["num_experts_per_token"] = 9; },
       {"num_experts_per_token", "num_experts = 8", "got 9"}},
      {"GroupsNotDividingExperts",
       [](Json& j) { j["num_expert_group"] = 3; },
       {"num_expert_group", "divisor"}},
      {"TopkGroupAboveGroups",
       [](Json& j) { j["topk_group"] = 2; },
       {"topk_group", "num_expert_group = 1"}},
      {"OneExpertPerGroup",
       [](Json& j) {
         j["num_expert_group"] = 8;
         j["topk_group"] = 8;
       },
       {"num_expert_group", "top 2"}},
      {"TopkAboveSelectedGroups",
       [](Json& j) {
         j["num_expert_group"] = 4;
         j["topk_group"] = 1;
         j["num_experts_per_token"] = 3;
       },
       {"num_experts_per_token", "topk_group"}},
      {"MoeLayersWithoutExperts",
       [](Json& j) {
         j["num_experts"] = 0;
         j.erase("first_k_dense_replace");
         j.erase("moe_layer_freq");
         j["mlp_layer_types"] = {"dense", "sparse", "sparse", "sparse"};
       },
       {"num_experts", "MoE"}},
      {"BosOutsideVocab",
       [](Json& j) { j["bos_token_id"] = 512; },
       {"bos_token_id", "vocab_size - 1 = 511"}},
      {"EosOutsideVocab",
       [](Json& j) {
         j["eos_token_id"] = {2, 600};
       },
       {"eos_token_id"}},
  };
  return *kCases;
}

INSTANTIATE_TEST_SUITE_P(Cases, RejectTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<RejectCase>& case_info) {
                           return case_info.param.name;
                         });

TEST(RejectTextTest, BadJsonNamesTheFile) {
  ExpectRejected("{\"vocab_size\": 512,", {"not valid JSON"});
  ExpectRejected("", {"not valid JSON"});
}

TEST(RejectTextTest, TopLevelMustBeAnObject) {
  ExpectRejected("[1, 2, 3]", {"expected a JSON object", "array"});
}

TEST(RejectTextTest, DuplicateKeyIsRejected) {
  std::string text = testing::ReadFileOrDie(testing::TinyFixturePath());
  text.insert(text.find('{') + 1, "\"hidden_size\": 256,");
  ExpectRejected(text, {"hidden_size", "twice"});
}

}  // namespace
}  // namespace deltaserve::model
