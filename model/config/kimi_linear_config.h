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

// Upper bounds Validate() enforces so that a hostile config.json cannot make us allocate absurd
// amounts. Each is far above any released Kimi Linear shape (48B: vocab 163840, hidden 2304).
inline constexpr int64_t kMaxVocabSize = int64_t{1} << 24;
inline constexpr int64_t kMaxHiddenSize = 65536;
inline constexpr int64_t kMaxNumLayers = 1024;
inline constexpr int64_t kMaxNumHeads = 1024;   // MLA and KDA heads
inline constexpr int64_t kMaxHeadDim = 4096;    // every per-head dim, conv excluded
inline constexpr int64_t kMaxLoraRank = 65536;  // kv_lora_rank
inline constexpr int64_t kMaxIntermediateSize = int64_t{1} << 20;  // dense and per-expert
inline constexpr int64_t kMaxNumExperts = 65536;                   // routed, shared, top-k, groups
inline constexpr int64_t kMaxConvKernelSize = 64;
inline constexpr int64_t kMaxPositionEmbeddings = int64_t{1} << 40;
inline constexpr int64_t kMaxEosTokenIds = 1024;
inline constexpr int64_t kMaxConfigFileBytes = int64_t{16} << 20;  // LoadKimiLinearConfig

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

  // Field-for-field (doubles compared exactly), e.g. to check a round trip.
  friend bool operator==(const KimiLinearConfig&, const KimiLinearConfig&) = default;
};

// Parses config.json text of either dialect and validates it. `source` (a path) prefixes errors.
// Every failure is InvalidArgument: "<source>: <field>: expected <what>, got <what>". Shape fields
// are required; semantic ones default to transformers' class defaults. A fact spelled two ways
// (alias, or both dialects) must agree. `kv_a_layernorm_eps` is read as an optional extension.
absl::StatusOr<KimiLinearConfig> ParseKimiLinearConfig(std::string_view json_text,
                                                       std::string_view source);
// Reads and parses a file: NotFound when it does not exist, InvalidArgument when it is not a
// regular file, is larger than kMaxConfigFileBytes or does not parse.
absl::StatusOr<KimiLinearConfig> LoadKimiLinearConfig(const std::string& path);

// config.json in the official release dialect; ParseKimiLinearConfig reads it back unchanged.
// An FFN layout the release's first_k_dense_replace/moe_layer_freq rule cannot express is
// written as `mlp_layer_types` instead. Precondition: config.Validate() is OK.
std::string ToOfficialConfigJson(const KimiLinearConfig& config);

// A stable 64-bit digest (FNV-1a) of every field that affects the forward pass; token ids and
// max_position_embeddings are not among them.
uint64_t ConfigFingerprint(const KimiLinearConfig& config);

}  // namespace deltaserve::model
