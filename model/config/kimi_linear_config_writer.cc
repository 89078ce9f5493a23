// ToOfficialConfigJson: a KimiLinearConfig as config.json in the official release dialect, laid
// out like the release file, such that ParseKimiLinearConfig reads back the same struct.
#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "model/config/kimi_linear_config.h"
#include "nlohmann/json.hpp"

namespace deltaserve::model {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr double kReleaseKvALayernormEps = 1e-6;

// (first_k_dense_replace, moe_layer_freq) reproducing ffn_kinds under the official rule, if any.
std::optional<std::pair<int64_t, int64_t>> OfficialFfnRule(const KimiLinearConfig& config) {
  const int64_t num_layers = static_cast<int64_t>(config.ffn_kinds.size());
  int64_t first_moe = -1;
  for (int64_t i = 0; i < num_layers; ++i) {
    if (config.ffn_kinds[i] == FfnKind::kMoe) {
      first_moe = i;
      break;
    }
  }
  if (first_moe < 0) {
    // All dense: with no experts the rule is dense anyway; otherwise push the first MoE past L.
    return std::make_pair(config.num_experts == 0 ? int64_t{1} : num_layers, int64_t{1});
  }
  if (config.num_experts == 0) return std::nullopt;
  // If any (k, f) works then (first_moe, f) does, so only the frequency needs searching.
  for (int64_t freq = 1; freq <= std::max<int64_t>(num_layers, 1); ++freq) {
    bool matches = true;
    for (int64_t i = 0; i < num_layers && matches; ++i) {
      const bool moe = i >= first_moe && i % freq == 0;
      matches = moe == (config.ffn_kinds[i] == FfnKind::kMoe);
    }
    if (matches) return std::make_pair(first_moe, freq);
  }
  return std::nullopt;
}

OrderedJson TokenIdOrNull(int64_t id) { return id < 0 ? OrderedJson(nullptr) : OrderedJson(id); }

}  // namespace

std::string ToOfficialConfigJson(const KimiLinearConfig& config) {
  OrderedJson json;
  json["architectures"] = OrderedJson::array({"KimiLinearForCausalLM"});
  json["model_type"] = "kimi_linear";
  json["vocab_size"] = config.vocab_size;
  json["hidden_size"] = config.hidden_size;
  json["num_hidden_layers"] = config.num_layers;
  json["intermediate_size"] = config.intermediate_size;
  json["hidden_act"] = "silu";
  json["rms_norm_eps"] = config.rms_norm_eps;
  json["tie_word_embeddings"] = config.tie_word_embeddings;
  json["bos_token_id"] = TokenIdOrNull(config.bos_token_id);
  if (config.eos_token_ids.empty()) {
    json["eos_token_id"] = nullptr;
  } else if (config.eos_token_ids.size() == 1) {
    json["eos_token_id"] = config.eos_token_ids[0];
  } else {
    json["eos_token_id"] = config.eos_token_ids;
  }
  json["pad_token_id"] = TokenIdOrNull(config.pad_token_id);
  if (config.max_position_embeddings > 0) {
    json["model_max_length"] = config.max_position_embeddings;
  }
  json["num_nextn_predict_layers"] = 0;

  json["num_attention_heads"] = config.mla_num_heads;
  json["num_key_value_heads"] = config.mla_num_heads;
  // Vestigial in the release (hidden_size / heads); written for tools that expect it.
  if (config.mla_num_heads > 0 && config.hidden_size % config.mla_num_heads == 0) {
    json["head_dim"] = config.hidden_size / config.mla_num_heads;
  }
  json["q_lora_rank"] = nullptr;
  json["kv_lora_rank"] = config.kv_lora_rank;
  json["qk_nope_head_dim"] = config.qk_nope_head_dim;
  json["qk_rope_head_dim"] = config.qk_rope_head_dim;
  json["v_head_dim"] = config.v_head_dim;
  json["mla_use_nope"] = true;
  if (config.kv_a_layernorm_eps != kReleaseKvALayernormEps) {
    json["kv_a_layernorm_eps"] = config.kv_a_layernorm_eps;  // our extension; see the parser
  }

  OrderedJson kda_layers = OrderedJson::array();
  OrderedJson full_attn_layers = OrderedJson::array();
  for (size_t i = 0; i < config.mixer_kinds.size(); ++i) {
    const int64_t one_based = static_cast<int64_t>(i) + 1;
    (config.mixer_kinds[i] == MixerKind::kKda ? kda_layers : full_attn_layers).push_back(one_based);
  }
  OrderedJson linear;
  linear["kda_layers"] = std::move(kda_layers);
  linear["full_attn_layers"] = std::move(full_attn_layers);
  linear["num_heads"] = config.kda_num_heads;
  linear["head_dim"] = config.kda_head_dim;
  linear["short_conv_kernel_size"] = config.conv_kernel_size;
  json["linear_attn_config"] = std::move(linear);

  json["num_experts"] = config.num_experts;
  json["num_experts_per_token"] = config.num_experts_per_token;
  json["num_shared_experts"] = config.num_shared_experts;
  json["moe_intermediate_size"] = config.moe_intermediate_size;
  if (const auto rule = OfficialFfnRule(config); rule.has_value()) {
    json["first_k_dense_replace"] = rule->first;
    json["moe_layer_freq"] = rule->second;
  } else {
    // Not expressible by the release's rule: spell it out (the parser then needs no rule fields).
    OrderedJson mlp_layer_types = OrderedJson::array();
    for (const FfnKind kind : config.ffn_kinds) {
      mlp_layer_types.push_back(kind == FfnKind::kMoe ? "sparse" : "dense");
    }
    json["mlp_layer_types"] = std::move(mlp_layer_types);
  }
  json["moe_router_activation_func"] = "sigmoid";
  json["moe_renormalize"] = config.moe_renormalize;
  json["routed_scaling_factor"] = config.routed_scaling_factor;
  json["use_grouped_topk"] = true;
  json["num_expert_group"] = config.num_expert_group;
  json["topk_group"] = config.topk_group;
  return json.dump(2) + "\n";
}

}  // namespace deltaserve::model
