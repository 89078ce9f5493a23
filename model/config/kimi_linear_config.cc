// Reads config.json of either dialect (official release or transformers 5.17, spec §1 and §8) into
// KimiLinearConfig. Facts spelled two ways (aliases, dialects) must agree or the file is rejected.
#include "model/config/kimi_linear_config.h"

#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/status_macros.h"
#include "model/config/json_reader.h"

namespace deltaserve::model {
namespace {

using config_internal::DescribeJson;
using config_internal::Json;
using config_internal::JsonToInt;
using config_internal::ObjectReader;

constexpr double kDefaultRmsNormEps = 1e-5;
constexpr double kDefaultKvALayernormEps = 1e-6;
// transformers' KimiLinearConfig class default (also the 48B release value).
constexpr double kDefaultRoutedScalingFactor = 2.446;
constexpr int64_t kDefaultConvKernelSize = 4;
constexpr int64_t kDefaultFirstKDenseReplace = 1;
constexpr double kMaxEps = 1.0;
constexpr double kMaxRoutedScalingFactor = 1e6;

// One spelling of a fact: the object it lives in and its key there.
struct Spelling {
  const ObjectReader* reader;
  std::string_view key;
};

std::string SpellingNames(std::initializer_list<Spelling> spellings) {
  std::string names;
  for (const Spelling& spelling : spellings) {
    names += names.empty() ? spelling.reader->Name(spelling.key)
                           : " (or " + spelling.reader->Name(spelling.key) + ")";
  }
  return names;
}

template <typename T>
std::string ValueText(const T& value) {
  return Json(value).dump();
}

// Reads every spelling of one fact with `read`; all present spellings must agree.
template <typename T, typename ReadFn>
absl::StatusOr<std::optional<T>> ReadFact(std::initializer_list<Spelling> spellings, ReadFn read) {
  std::optional<T> result;
  const Spelling* first = nullptr;
  for (const Spelling& spelling : spellings) {
    DS_ASSIGN_OR_RETURN(std::optional<T> value, read(*spelling.reader, spelling.key));
    if (!value.has_value()) continue;
    if (!result.has_value()) {
      result = value;
      first = &spelling;
    } else if (*value != *result) {
      return spelling.reader->Error(spelling.key,
                                    ValueText(*result) + " (the value of " +
                                        first->reader->Name(first->key) +
                                        ", the same field in the other dialect)",
                                    ValueText(*value));
    }
  }
  return result;
}

absl::StatusOr<std::optional<int64_t>> IntFact(std::initializer_list<Spelling> spellings,
                                               int64_t min_value, int64_t max_value) {
  return ReadFact<int64_t>(spellings, [&](const ObjectReader& reader, std::string_view key) {
    return reader.Int(key, min_value, max_value);
  });
}

absl::StatusOr<int64_t> RequiredIntFact(std::initializer_list<Spelling> spellings,
                                        int64_t min_value, int64_t max_value) {
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> value, IntFact(spellings, min_value, max_value));
  if (!value.has_value()) {
    const Spelling& first = *spellings.begin();
    return absl::InvalidArgumentError(first.reader->source() + ": " + SpellingNames(spellings) +
                                      ": expected an integer in [" + std::to_string(min_value) +
                                      ", " + std::to_string(max_value) +
                                      "], got nothing (required field is missing)");
  }
  return *value;
}

absl::StatusOr<int64_t> RequiredInt(const ObjectReader& reader, std::string_view key,
                                    int64_t min_value, int64_t max_value) {
  return RequiredIntFact({{&reader, key}}, min_value, max_value);
}

absl::StatusOr<bool> BoolFact(std::initializer_list<Spelling> spellings, bool default_value) {
  DS_ASSIGN_OR_RETURN(
      std::optional<bool> value,
      ReadFact<bool>(spellings, [](const ObjectReader& reader, std::string_view key) {
        return reader.Bool(key);
      }));
  return value.value_or(default_value);
}

absl::StatusOr<double> DoubleOr(const ObjectReader& reader, std::string_view key,
                                double exclusive_min, double max_value, double default_value) {
  DS_ASSIGN_OR_RETURN(std::optional<double> value, reader.Double(key, exclusive_min, max_value));
  return value.value_or(default_value);
}

// A string field that, when present, must equal `supported`.
absl::Status ExpectStringIfPresent(const ObjectReader& reader, std::string_view key,
                                   std::string_view supported) {
  DS_ASSIGN_OR_RETURN(std::optional<std::string> value, reader.String(key));
  if (value.has_value() && *value != supported) {
    return reader.Error(key, "\"" + std::string(supported) + "\" (the only supported value)",
                        "\"" + *value + "\"");
  }
  return absl::OkStatus();
}

// The JSON text as a tree; duplicate keys in one object are rejected (which one wins is a guess).
absl::StatusOr<Json> ParseJsonText(std::string_view json_text, const std::string& source) {
  std::vector<std::set<std::string>> keys_stack;
  std::string duplicate_key;
  auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      keys_stack.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      if (!keys_stack.empty()) keys_stack.pop_back();
    } else if (event == Json::parse_event_t::key && !keys_stack.empty() && parsed.is_string()) {
      if (!keys_stack.back().insert(parsed.get<std::string>()).second && duplicate_key.empty()) {
        duplicate_key = parsed.get<std::string>();
      }
    }
    return true;
  };
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end(), callback);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(source + ": not valid JSON: " + e.what());
  }
  if (!duplicate_key.empty()) {
    return absl::InvalidArgumentError(source + ": " + duplicate_key +
                                      ": expected each key once per object, got it twice");
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(source + ": expected a JSON object at the top level, got " +
                                      DescribeJson(root));
  }
  return root;
}

// Values the engine does not implement: refuse them instead of computing something else.
absl::Status CheckUnsupported(const ObjectReader& top, const ObjectReader& linear) {
  DS_RETURN_IF_ERROR(ExpectStringIfPresent(top, "model_type", "kimi_linear"));
  DS_RETURN_IF_ERROR(ExpectStringIfPresent(top, "hidden_act", "silu"));
  DS_RETURN_IF_ERROR(ExpectStringIfPresent(top, "moe_router_activation_func", "sigmoid"));
  if (const Json* q_lora_rank = top.Get("q_lora_rank");
      q_lora_rank != nullptr && !q_lora_rank->is_null()) {
    return top.TypeError("q_lora_rank", "null (low-rank queries are not supported)", *q_lora_rank);
  }
  DS_ASSIGN_OR_RETURN(std::optional<bool> mla_use_nope, top.Bool("mla_use_nope"));
  if (mla_use_nope.has_value() && !*mla_use_nope) {
    return top.Error("mla_use_nope", "true (MLA with RoPE is not supported, spec §1)", "false");
  }
  DS_ASSIGN_OR_RETURN(std::optional<bool> attention_bias, top.Bool("attention_bias"));
  if (attention_bias.value_or(false)) {
    return top.Error("attention_bias", "false (MLA projection biases are not supported)", "true");
  }
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> nextn,
                      top.Int("num_nextn_predict_layers", 0, kMaxNumLayers));
  if (nextn.value_or(0) != 0) {
    return top.Error("num_nextn_predict_layers", "0 (multi-token prediction is not supported)",
                     std::to_string(*nextn));
  }
  if (const Json* gate_lower_bound = linear.Get("gate_lower_bound");
      gate_lower_bound != nullptr && !gate_lower_bound->is_null()) {
    return linear.TypeError("gate_lower_bound",
                            "absent or null (a bounded KDA gate is not supported)",
                            *gate_lower_bound);
  }
  if (const Json* expand_v = linear.Get("expand_v"); expand_v != nullptr) {
    if (!expand_v->is_number() || expand_v->get<double>() != 1.0) {
      return linear.TypeError("expand_v", "1 (v heads as wide as k heads, spec §1)", *expand_v);
    }
  }
  return absl::OkStatus();
}

absl::Status ParseGeneral(const ObjectReader& top, KimiLinearConfig& config) {
  DS_ASSIGN_OR_RETURN(config.vocab_size, RequiredInt(top, "vocab_size", 1, kMaxVocabSize));
  DS_ASSIGN_OR_RETURN(config.hidden_size, RequiredInt(top, "hidden_size", 1, kMaxHiddenSize));
  DS_ASSIGN_OR_RETURN(config.num_layers, RequiredInt(top, "num_hidden_layers", 1, kMaxNumLayers));
  DS_ASSIGN_OR_RETURN(config.intermediate_size,
                      RequiredInt(top, "intermediate_size", 1, kMaxIntermediateSize));
  DS_ASSIGN_OR_RETURN(config.rms_norm_eps,
                      DoubleOr(top, "rms_norm_eps", 0.0, kMaxEps, kDefaultRmsNormEps));
  // Not part of either dialect: an optional extension so that ToOfficialConfigJson round-trips.
  DS_ASSIGN_OR_RETURN(config.kv_a_layernorm_eps,
                      DoubleOr(top, "kv_a_layernorm_eps", 0.0, kMaxEps, kDefaultKvALayernormEps));
  DS_ASSIGN_OR_RETURN(config.tie_word_embeddings, BoolFact({{&top, "tie_word_embeddings"}}, false));
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> max_positions,
                      IntFact({{&top, "model_max_length"}, {&top, "max_position_embeddings"}}, 1,
                              kMaxPositionEmbeddings));
  config.max_position_embeddings = max_positions.value_or(0);

  const int64_t max_token_id = kMaxVocabSize - 1;
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> bos, top.NullableInt("bos_token_id", 0, max_token_id));
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> pad, top.NullableInt("pad_token_id", 0, max_token_id));
  config.bos_token_id = bos.value_or(-1);
  config.pad_token_id = pad.value_or(-1);
  config.eos_token_ids.clear();
  if (const Json* eos = top.Get("eos_token_id"); eos != nullptr && !eos->is_null()) {
    const std::string expected = "a token id in [0, " + std::to_string(max_token_id) +
                                 "], a list of at most " + std::to_string(kMaxEosTokenIds) +
                                 " of them, or null";
    if (eos->is_array()) {
      if (static_cast<int64_t>(eos->size()) > kMaxEosTokenIds) {
        return top.Error("eos_token_id", expected,
                         "a list of " + std::to_string(eos->size()) + " ids");
      }
      for (const Json& element : *eos) {
        const std::optional<int64_t> id = JsonToInt(element, 0, max_token_id);
        if (!id.has_value()) {
          return top.Error("eos_token_id", expected, "a list holding " + DescribeJson(element));
        }
        config.eos_token_ids.push_back(*id);
      }
    } else {
      const std::optional<int64_t> id = JsonToInt(*eos, 0, max_token_id);
      if (!id.has_value()) return top.TypeError("eos_token_id", expected, *eos);
      config.eos_token_ids.push_back(*id);
    }
  }
  return absl::OkStatus();
}

absl::Status ParseMla(const ObjectReader& top, KimiLinearConfig& config) {
  DS_ASSIGN_OR_RETURN(config.mla_num_heads,
                      RequiredInt(top, "num_attention_heads", 1, kMaxNumHeads));
  DS_ASSIGN_OR_RETURN(config.kv_lora_rank, RequiredInt(top, "kv_lora_rank", 1, kMaxLoraRank));
  DS_ASSIGN_OR_RETURN(config.qk_nope_head_dim,
                      RequiredInt(top, "qk_nope_head_dim", 1, kMaxHeadDim));
  DS_ASSIGN_OR_RETURN(config.qk_rope_head_dim,
                      RequiredInt(top, "qk_rope_head_dim", 1, kMaxHeadDim));
  DS_ASSIGN_OR_RETURN(config.v_head_dim, RequiredInt(top, "v_head_dim", 1, kMaxHeadDim));
  return absl::OkStatus();
}

// Mixer per layer from linear_attn_config's 1-based kda_layers / full_attn_layers; nullopt when
// both lists are absent.
absl::StatusOr<std::optional<std::vector<MixerKind>>> MixersFromLayerLists(
    const ObjectReader& linear, int64_t num_layers) {
  const bool has_kda = linear.Has("kda_layers");
  const bool has_full = linear.Has("full_attn_layers");
  if (!has_kda && !has_full) return std::optional<std::vector<MixerKind>>();
  if (has_kda != has_full) {
    const std::string_view missing = has_kda ? "full_attn_layers" : "kda_layers";
    const std::string_view given = has_kda ? "kda_layers" : "full_attn_layers";
    return linear.Error(missing,
                        "a list of 1-based layer numbers (" + linear.Name(given) + " is given)",
                        "nothing");
  }
  const std::string range = "[1, " + std::to_string(num_layers) + "]";
  std::vector<std::optional<MixerKind>> mixers(num_layers);
  std::vector<std::string_view> listed_in(num_layers);
  for (const auto& [key, kind] :
       {std::pair<std::string_view, MixerKind>{"kda_layers", MixerKind::kKda},
        {"full_attn_layers", MixerKind::kMla}}) {
    const Json& list = *linear.Get(key);
    if (!list.is_array()) {
      return linear.TypeError(key, "a list of 1-based layer numbers in " + range, list);
    }
    for (const Json& element : list) {
      const std::optional<int64_t> number = JsonToInt(element, 1, num_layers);
      if (!number.has_value()) {
        return linear.Error(key, "1-based layer numbers in " + range,
                            "a list holding " + DescribeJson(element));
      }
      const int64_t index = *number - 1;
      if (mixers[index].has_value()) {
        return linear.Error(key, "each layer exactly once across kda_layers and full_attn_layers",
                            "layer " + std::to_string(*number) + " again (already in " +
                                linear.Name(listed_in[index]) + ")");
      }
      mixers[index] = kind;
      listed_in[index] = key;
    }
  }
  std::vector<MixerKind> result;
  result.reserve(num_layers);
  for (int64_t i = 0; i < num_layers; ++i) {
    if (!mixers[i].has_value()) {
      return absl::InvalidArgumentError(
          linear.source() + ": " + linear.Name("kda_layers") + " / " +
          linear.Name("full_attn_layers") + ": expected every layer in " + range +
          " exactly once, got layer " + std::to_string(i + 1) + " in neither list");
    }
    result.push_back(*mixers[i]);
  }
  return std::optional<std::vector<MixerKind>>(std::move(result));
}

// A per-layer list of strings naming one of two kinds (`layer_types`, `mlp_layer_types`).
template <typename Kind>
absl::StatusOr<std::optional<std::vector<Kind>>> KindsFromStringList(
    const ObjectReader& top, std::string_view key, int64_t num_layers, std::string_view first_name,
    Kind first_kind, std::string_view second_name, Kind second_kind) {
  const Json* list = top.Get(key);
  if (list == nullptr) return std::optional<std::vector<Kind>>();
  const std::string expected = "a list of " + std::to_string(num_layers) + " strings, each \"" +
                               std::string(first_name) + "\" or \"" + std::string(second_name) +
                               "\"";
  if (!list->is_array()) return top.TypeError(key, expected, *list);
  if (static_cast<int64_t>(list->size()) != num_layers) {
    return top.Error(key, expected, "a list of " + std::to_string(list->size()));
  }
  std::vector<Kind> result;
  result.reserve(num_layers);
  for (const Json& element : *list) {
    if (element.is_string() && element.get<std::string>() == first_name) {
      result.push_back(first_kind);
    } else if (element.is_string() && element.get<std::string>() == second_name) {
      result.push_back(second_kind);
    } else {
      return top.Error(key, expected, "a list holding " + DescribeJson(element));
    }
  }
  return std::optional<std::vector<Kind>>(std::move(result));
}

const char* MixerTypeName(MixerKind kind) {
  return kind == MixerKind::kKda ? "linear_attention" : "full_attention";
}

const char* FfnTypeName(FfnKind kind) { return kind == FfnKind::kDense ? "dense" : "sparse"; }

absl::Status ParseKda(const ObjectReader& top, const ObjectReader& linear,
                      KimiLinearConfig& config) {
  // transformers' `head_dim` is qk_rope_head_dim and the release's is vestigial: never KDA's.
  DS_ASSIGN_OR_RETURN(
      config.kda_num_heads,
      RequiredIntFact({{&linear, "num_heads"}, {&top, "linear_num_heads"}}, 1, kMaxNumHeads));
  DS_ASSIGN_OR_RETURN(
      config.kda_head_dim,
      RequiredIntFact({{&linear, "head_dim"}, {&top, "linear_head_dim"}}, 1, kMaxHeadDim));
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> conv, IntFact({{&linear, "short_conv_kernel_size"},
                                                            {&top, "linear_conv_kernel_dim"}},
                                                           1, kMaxConvKernelSize));
  config.conv_kernel_size = conv.value_or(kDefaultConvKernelSize);
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> num_v_heads,
                      linear.Int("num_v_heads", 1, kMaxNumHeads));
  if (num_v_heads.has_value() && *num_v_heads != config.kda_num_heads) {
    return linear.Error("num_v_heads",
                        std::to_string(config.kda_num_heads) +
                            " (= num_heads; grouped value heads are not supported)",
                        std::to_string(*num_v_heads));
  }

  DS_ASSIGN_OR_RETURN(std::optional<std::vector<MixerKind>> from_lists,
                      MixersFromLayerLists(linear, config.num_layers));
  DS_ASSIGN_OR_RETURN(std::optional<std::vector<MixerKind>> from_types,
                      KindsFromStringList(top, "layer_types", config.num_layers, "linear_attention",
                                          MixerKind::kKda, "full_attention", MixerKind::kMla));
  if (from_lists.has_value() && from_types.has_value()) {
    for (int64_t i = 0; i < config.num_layers; ++i) {
      if ((*from_lists)[i] != (*from_types)[i]) {
        return top.Error("layer_types",
                         std::string("\"") + MixerTypeName((*from_lists)[i]) + "\" at index " +
                             std::to_string(i) + " (as linear_attn_config's 1-based layer " +
                             std::to_string(i + 1) + " says)",
                         std::string("\"") + MixerTypeName((*from_types)[i]) + "\"");
      }
    }
  }
  if (!from_lists.has_value() && !from_types.has_value()) {
    return top.Error("layer_types",
                     "a layer map (layer_types, or linear_attn_config.kda_layers and "
                     "full_attn_layers)",
                     "nothing (required field is missing)");
  }
  config.mixer_kinds = from_lists.has_value() ? *std::move(from_lists) : *std::move(from_types);
  return absl::OkStatus();
}

absl::Status ParseMoe(const ObjectReader& top, KimiLinearConfig& config) {
  DS_ASSIGN_OR_RETURN(
      config.num_experts,
      RequiredIntFact({{&top, "num_experts"}, {&top, "num_local_experts"}}, 0, kMaxNumExperts));
  DS_ASSIGN_OR_RETURN(
      config.num_experts_per_token,
      RequiredIntFact({{&top, "num_experts_per_token"}, {&top, "num_experts_per_tok"}}, 0,
                      kMaxNumExperts));
  DS_ASSIGN_OR_RETURN(config.num_shared_experts,
                      RequiredIntFact({{&top, "num_shared_experts"}, {&top, "n_shared_experts"}}, 0,
                                      kMaxNumExperts));
  DS_ASSIGN_OR_RETURN(config.moe_intermediate_size,
                      RequiredInt(top, "moe_intermediate_size", 0, kMaxIntermediateSize));
  DS_ASSIGN_OR_RETURN(config.moe_renormalize,
                      BoolFact({{&top, "moe_renormalize"}, {&top, "norm_topk_prob"}}, true));
  DS_ASSIGN_OR_RETURN(config.routed_scaling_factor,
                      DoubleOr(top, "routed_scaling_factor", 0.0, kMaxRoutedScalingFactor,
                               kDefaultRoutedScalingFactor));
  DS_ASSIGN_OR_RETURN(const bool use_grouped_topk, BoolFact({{&top, "use_grouped_topk"}}, true));
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> groups,
                      IntFact({{&top, "num_expert_group"}, {&top, "n_group"}}, 1, kMaxNumExperts));
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> topk_group, top.Int("topk_group", 1, kMaxNumExperts));
  // use_grouped_topk=false means plain top-k, which is grouped top-k with one group.
  config.num_expert_group = use_grouped_topk ? groups.value_or(1) : 1;
  config.topk_group = use_grouped_topk ? topk_group.value_or(1) : 1;

  // Official rule (remote code): MoE iff experts exist, i >= first_k_dense_replace and
  // i % moe_layer_freq == 0. transformers spells the result out as mlp_layer_types.
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> first_dense,
                      top.Int("first_k_dense_replace", 0, kMaxNumLayers));
  DS_ASSIGN_OR_RETURN(std::optional<int64_t> layer_freq,
                      top.Int("moe_layer_freq", 1, kMaxNumLayers));
  std::vector<FfnKind> from_rule;
  from_rule.reserve(config.num_layers);
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const bool moe = config.num_experts > 0 &&
                     i >= first_dense.value_or(kDefaultFirstKDenseReplace) &&
                     i % layer_freq.value_or(1) == 0;
    from_rule.push_back(moe ? FfnKind::kMoe : FfnKind::kDense);
  }
  DS_ASSIGN_OR_RETURN(std::optional<std::vector<FfnKind>> from_types,
                      KindsFromStringList(top, "mlp_layer_types", config.num_layers, "dense",
                                          FfnKind::kDense, "sparse", FfnKind::kMoe));
  if (!from_types.has_value()) {
    config.ffn_kinds = std::move(from_rule);
    return absl::OkStatus();
  }
  if (first_dense.has_value() || layer_freq.has_value()) {
    for (int64_t i = 0; i < config.num_layers; ++i) {
      if (from_rule[i] != (*from_types)[i]) {
        return top.Error("mlp_layer_types",
                         std::string("\"") + FfnTypeName(from_rule[i]) + "\" at index " +
                             std::to_string(i) +
                             " (as num_experts, first_k_dense_replace and moe_layer_freq say)",
                         std::string("\"") + FfnTypeName((*from_types)[i]) + "\"");
      }
    }
  }
  config.ffn_kinds = *std::move(from_types);
  return absl::OkStatus();
}

absl::StatusOr<KimiLinearConfig> ParseRoot(const Json& root, const std::string& source) {
  const ObjectReader top(&root, source, "");
  const Json* linear_json = top.Get("linear_attn_config");
  if (linear_json != nullptr && !linear_json->is_object()) {
    return top.TypeError("linear_attn_config", "an object", *linear_json);
  }
  const ObjectReader linear(linear_json, source, "linear_attn_config.");

  KimiLinearConfig config;
  DS_RETURN_IF_ERROR(CheckUnsupported(top, linear));
  DS_RETURN_IF_ERROR(ParseGeneral(top, config));
  DS_RETURN_IF_ERROR(ParseMla(top, config));
  DS_RETURN_IF_ERROR(ParseKda(top, linear, config));
  DS_RETURN_IF_ERROR(ParseMoe(top, config));
  if (absl::Status status = config.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(source + ": " + std::string(status.message()));
  }
  return config;
}

}  // namespace

absl::StatusOr<KimiLinearConfig> ParseKimiLinearConfig(std::string_view json_text,
                                                       std::string_view source) {
  const std::string source_name(source);
  DS_ASSIGN_OR_RETURN(const Json root, ParseJsonText(json_text, source_name));
  // The readers check types before every access; this catch keeps a missed case from escaping.
  try {
    return ParseRoot(root, source_name);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(source_name + ": unexpected JSON content: " + e.what());
  } catch (const std::exception& e) {
    return absl::InternalError(source_name + ": " + e.what());
  }
}

absl::StatusOr<KimiLinearConfig> LoadKimiLinearConfig(const std::string& path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (status.type() == std::filesystem::file_type::not_found) {
    return absl::NotFoundError(path + ": config file not found");
  }
  if (error) return absl::UnavailableError(path + ": cannot stat config file: " + error.message());
  if (status.type() != std::filesystem::file_type::regular) {
    return absl::InvalidArgumentError(path + ": expected a regular config file, got another kind");
  }
  const uintmax_t size = std::filesystem::file_size(path, error);
  if (error) return absl::UnavailableError(path + ": cannot size config file: " + error.message());
  if (size > static_cast<uintmax_t>(kMaxConfigFileBytes)) {
    return absl::InvalidArgumentError(path + ": expected a config file of at most " +
                                      std::to_string(kMaxConfigFileBytes) + " bytes, got " +
                                      std::to_string(size));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::UnavailableError(path + ": cannot open config file");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::UnavailableError(path + ": error reading config file");
  return ParseKimiLinearConfig(text, path);
}

}  // namespace deltaserve::model
