// ConfigFingerprint: FNV-1a 64 over a canonical little-endian serialization of the fields that
// affect the forward pass (token ids and model_max_length are left out: they do not).
#include <bit>
#include <cstdint>
#include <string_view>

#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {
namespace {

class Fnv1a64 {
 public:
  void Byte(uint8_t byte) {
    hash_ ^= byte;
    hash_ *= kPrime;
  }
  void U64(uint64_t value) {
    for (int i = 0; i < 8; ++i) Byte(static_cast<uint8_t>(value >> (8 * i)));
  }
  void I64(int64_t value) { U64(static_cast<uint64_t>(value)); }
  void F64(double value) { U64(std::bit_cast<uint64_t>(value)); }
  void Bool(bool value) { Byte(value ? 1 : 0); }
  void Text(std::string_view text) {
    U64(text.size());
    for (const char c : text) Byte(static_cast<uint8_t>(c));
  }
  uint64_t hash() const { return hash_; }

 private:
  static constexpr uint64_t kOffsetBasis = 14695981039346656037ULL;
  static constexpr uint64_t kPrime = 1099511628211ULL;
  uint64_t hash_ = kOffsetBasis;
};

}  // namespace

uint64_t ConfigFingerprint(const KimiLinearConfig& config) {
  Fnv1a64 fnv;
  // Bump the tag whenever the serialization below changes.
  fnv.Text("deltaserve.KimiLinearConfig.v1");
  fnv.I64(config.vocab_size);
  fnv.I64(config.hidden_size);
  fnv.I64(config.num_layers);
  fnv.I64(config.intermediate_size);
  fnv.F64(config.rms_norm_eps);
  fnv.Bool(config.tie_word_embeddings);

  fnv.I64(config.mla_num_heads);
  fnv.I64(config.kv_lora_rank);
  fnv.I64(config.qk_nope_head_dim);
  fnv.I64(config.qk_rope_head_dim);
  fnv.I64(config.v_head_dim);
  fnv.F64(config.kv_a_layernorm_eps);

  fnv.I64(config.kda_num_heads);
  fnv.I64(config.kda_head_dim);
  fnv.I64(config.conv_kernel_size);

  fnv.I64(config.num_experts);
  fnv.I64(config.num_experts_per_token);
  fnv.I64(config.num_shared_experts);
  fnv.I64(config.moe_intermediate_size);
  fnv.I64(config.num_expert_group);
  fnv.I64(config.topk_group);
  fnv.Bool(config.moe_renormalize);
  fnv.F64(config.routed_scaling_factor);

  fnv.U64(config.mixer_kinds.size());
  for (const MixerKind kind : config.mixer_kinds) fnv.Byte(static_cast<uint8_t>(kind));
  fnv.U64(config.ffn_kinds.size());
  for (const FfnKind kind : config.ffn_kinds) fnv.Byte(static_cast<uint8_t>(kind));
  return fnv.hash();
}

}  // namespace deltaserve::model
