// One typed Kimi Linear configuration, read from either config.json dialect (spec §1, §8):
// the official release (`linear_attn_config`, `first_k_dense_replace`, ...) or transformers'
// own (`layer_types`, `linear_num_heads`, `mlp_layer_types`, ...).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deltaserve::model {

enum class MixerKind : uint8_t { kKda, kMla };
enum class FfnKind : uint8_t { kDense, kMoe };

struct KimiLinearConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t intermediate_size = 0;  // dense SwiGLU
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 0;  // model_max_length; 0 when absent
  std::vector<int64_t> eos_token_ids;   // may be empty
  int64_t bos_token_id = -1;            // -1 when absent
  int64_t pad_token_id = -1;

  // MLA (full attention, NoPE). q_lora_rank must be null.
  int64_t mla_num_heads = 0;
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  // kv_a_layernorm epsilon: 1e-6 in the reference (transformers and the HF remote code).
  double kv_a_layernorm_eps = 1e-6;

  // KDA (linear attention): q, k and v heads alike, d_k = d_v = kda_head_dim.
  int64_t kda_num_heads = 0;
  int64_t kda_head_dim = 0;
  int64_t conv_kernel_size = 0;

  // MoE.
  int64_t num_experts = 0;
  int64_t num_experts_per_token = 0;
  int64_t num_shared_experts = 0;
  int64_t moe_intermediate_size = 0;
  int64_t num_expert_group = 1;
  int64_t topk_group = 1;
  bool moe_renormalize = true;
  double routed_scaling_factor = 1.0;

  std::vector<MixerKind> mixer_kinds;  // per layer, 0-based
  std::vector<FfnKind> ffn_kinds;      // per layer, 0-based

  bool IsKda(int64_t layer) const { return mixer_kinds[layer] == MixerKind::kKda; }
  bool IsMoe(int64_t layer) const { return ffn_kinds[layer] == FfnKind::kMoe; }
  int64_t kda_projection_size() const { return kda_num_heads * kda_head_dim; }
  int64_t mla_qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int64_t mla_latent_size() const { return kv_lora_rank + qk_rope_head_dim; }

  // Checks internal consistency; the message names the offending field.
  absl::Status Validate() const;
};

// Parses config.json text of either dialect and validates it. `source` (a path) prefixes errors.
absl::StatusOr<KimiLinearConfig> ParseKimiLinearConfig(std::string_view json_text,
                                                       std::string_view source);
absl::StatusOr<KimiLinearConfig> LoadKimiLinearConfig(const std::string& path);

// config.json in the official release dialect; ParseKimiLinearConfig reads it back unchanged.
std::string ToOfficialConfigJson(const KimiLinearConfig& config);

// A stable 64-bit digest of every field that affects the forward pass.
uint64_t ConfigFingerprint(const KimiLinearConfig& config);

}  // namespace deltaserve::model
