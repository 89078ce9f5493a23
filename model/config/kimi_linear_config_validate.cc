// KimiLinearConfig::Validate: ranges (the kMax* bounds in the header) and cross-field consistency.
#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>

#include "base/status_macros.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {
namespace {

absl::Status FieldError(std::string_view field, const std::string& expected,
                        const std::string& got) {
  return absl::InvalidArgumentError(std::string(field) + ": expected " + expected + ", got " + got);
}

// `max_name`, when given, says where the upper bound comes from ("num_experts").
absl::Status CheckRange(std::string_view field, int64_t value, int64_t min_value, int64_t max_value,
                        std::string_view max_name = {}) {
  if (value < min_value || value > max_value) {
    const std::string max_text = max_name.empty()
                                     ? std::to_string(max_value)
                                     : std::string(max_name) + " = " + std::to_string(max_value);
    return FieldError(field, "a value in [" + std::to_string(min_value) + ", " + max_text + "]",
                      std::to_string(value));
  }
  return absl::OkStatus();
}

std::string FormatDouble(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.17g", value);
  return text;
}

absl::Status CheckEps(std::string_view field, double value) {
  if (!std::isfinite(value) || value <= 0.0 || value > 1.0) {
    return FieldError(field, "a finite value in (0, 1]", FormatDouble(value));
  }
  return absl::OkStatus();
}

// -1 stands for "absent".
absl::Status CheckOptionalTokenId(std::string_view field, int64_t id, int64_t vocab_size) {
  if (id == -1) return absl::OkStatus();
  return CheckRange(field, id, 0, vocab_size - 1, "vocab_size - 1");
}

absl::Status ValidateGeneral(const KimiLinearConfig& c) {
  DS_RETURN_IF_ERROR(CheckRange("vocab_size", c.vocab_size, 1, kMaxVocabSize));
  DS_RETURN_IF_ERROR(CheckRange("hidden_size", c.hidden_size, 1, kMaxHiddenSize));
  DS_RETURN_IF_ERROR(CheckRange("num_hidden_layers", c.num_layers, 1, kMaxNumLayers));
  DS_RETURN_IF_ERROR(CheckRange("intermediate_size", c.intermediate_size, 1, kMaxIntermediateSize));
  DS_RETURN_IF_ERROR(CheckEps("rms_norm_eps", c.rms_norm_eps));
  DS_RETURN_IF_ERROR(CheckEps("kv_a_layernorm_eps", c.kv_a_layernorm_eps));
  DS_RETURN_IF_ERROR(
      CheckRange("model_max_length", c.max_position_embeddings, 0, kMaxPositionEmbeddings));
  DS_RETURN_IF_ERROR(CheckOptionalTokenId("bos_token_id", c.bos_token_id, c.vocab_size));
  DS_RETURN_IF_ERROR(CheckOptionalTokenId("pad_token_id", c.pad_token_id, c.vocab_size));
  DS_RETURN_IF_ERROR(CheckRange("eos_token_id count", static_cast<int64_t>(c.eos_token_ids.size()),
                                0, kMaxEosTokenIds));
  for (const int64_t id : c.eos_token_ids) {
    DS_RETURN_IF_ERROR(CheckRange("eos_token_id", id, 0, c.vocab_size - 1, "vocab_size - 1"));
  }
  return absl::OkStatus();
}

absl::Status ValidateMixers(const KimiLinearConfig& c) {
  DS_RETURN_IF_ERROR(CheckRange("num_attention_heads", c.mla_num_heads, 1, kMaxNumHeads));
  DS_RETURN_IF_ERROR(CheckRange("kv_lora_rank", c.kv_lora_rank, 1, kMaxLoraRank));
  DS_RETURN_IF_ERROR(CheckRange("qk_nope_head_dim", c.qk_nope_head_dim, 1, kMaxHeadDim));
  DS_RETURN_IF_ERROR(CheckRange("qk_rope_head_dim", c.qk_rope_head_dim, 1, kMaxHeadDim));
  DS_RETURN_IF_ERROR(CheckRange("v_head_dim", c.v_head_dim, 1, kMaxHeadDim));
  DS_RETURN_IF_ERROR(CheckRange("kda_num_heads", c.kda_num_heads, 1, kMaxNumHeads));
  DS_RETURN_IF_ERROR(CheckRange("kda_head_dim", c.kda_head_dim, 1, kMaxHeadDim));
  DS_RETURN_IF_ERROR(CheckRange("conv_kernel_size", c.conv_kernel_size, 1, kMaxConvKernelSize));
  if (static_cast<int64_t>(c.mixer_kinds.size()) != c.num_layers) {
    return FieldError("mixer_kinds", std::to_string(c.num_layers) + " entries (num_layers)",
                      std::to_string(c.mixer_kinds.size()));
  }
  for (size_t i = 0; i < c.mixer_kinds.size(); ++i) {
    if (c.mixer_kinds[i] != MixerKind::kKda && c.mixer_kinds[i] != MixerKind::kMla) {
      return FieldError("mixer_kinds", "KDA or MLA at layer " + std::to_string(i),
                        "value " + std::to_string(static_cast<int>(c.mixer_kinds[i])));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateMoe(const KimiLinearConfig& c) {
  DS_RETURN_IF_ERROR(CheckRange("num_experts", c.num_experts, 0, kMaxNumExperts));
  DS_RETURN_IF_ERROR(CheckRange("num_shared_experts", c.num_shared_experts, 0, kMaxNumExperts));
  if (!std::isfinite(c.routed_scaling_factor) || c.routed_scaling_factor <= 0.0) {
    return FieldError("routed_scaling_factor", "a finite value > 0",
                      FormatDouble(c.routed_scaling_factor));
  }
  if (static_cast<int64_t>(c.ffn_kinds.size()) != c.num_layers) {
    return FieldError("ffn_kinds", std::to_string(c.num_layers) + " entries (num_layers)",
                      std::to_string(c.ffn_kinds.size()));
  }
  for (size_t i = 0; i < c.ffn_kinds.size(); ++i) {
    if (c.ffn_kinds[i] == FfnKind::kMoe) {
      if (c.num_experts == 0) {
        return FieldError("num_experts", "> 0 (layer " + std::to_string(i) + " is MoE)", "0");
      }
    } else if (c.ffn_kinds[i] != FfnKind::kDense) {
      return FieldError("ffn_kinds", "dense or MoE at layer " + std::to_string(i),
                        "value " + std::to_string(static_cast<int>(c.ffn_kinds[i])));
    }
  }
  if (c.num_experts == 0) return absl::OkStatus();  // no router, nothing more to agree with

  DS_RETURN_IF_ERROR(CheckRange("num_experts_per_token", c.num_experts_per_token, 1, c.num_experts,
                                "num_experts"));
  DS_RETURN_IF_ERROR(
      CheckRange("moe_intermediate_size", c.moe_intermediate_size, 1, kMaxIntermediateSize));
  DS_RETURN_IF_ERROR(
      CheckRange("num_expert_group", c.num_expert_group, 1, c.num_experts, "num_experts"));
  if (c.num_experts % c.num_expert_group != 0) {
    return FieldError("num_expert_group",
                      "a divisor of num_experts = " + std::to_string(c.num_experts),
                      std::to_string(c.num_expert_group));
  }
  DS_RETURN_IF_ERROR(
      CheckRange("topk_group", c.topk_group, 1, c.num_expert_group, "num_expert_group"));
  if (c.num_expert_group > 1) {
    const int64_t experts_per_group = c.num_experts / c.num_expert_group;
    // Group scores are the sum of each group's top 2 experts (DeepSeek-V3 style router).
    if (experts_per_group < 2) {
      return FieldError("num_expert_group",
                        "at most num_experts / 2 = " + std::to_string(c.num_experts / 2) +
                            " (the router scores each group by its top 2 experts)",
                        std::to_string(c.num_expert_group));
    }
    if (c.num_experts_per_token > c.topk_group * experts_per_group) {
      return FieldError("num_experts_per_token",
                        "at most topk_group * experts per group = " +
                            std::to_string(c.topk_group * experts_per_group),
                        std::to_string(c.num_experts_per_token));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status KimiLinearConfig::Validate() const {
  DS_RETURN_IF_ERROR(ValidateGeneral(*this));
  DS_RETURN_IF_ERROR(ValidateMixers(*this));
  DS_RETURN_IF_ERROR(ValidateMoe(*this));
  return absl::OkStatus();
}

}  // namespace deltaserve::model
