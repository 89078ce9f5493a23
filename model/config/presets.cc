// The built-in configurations; values match tests/data/kimi-tiny-public/config.json (tiny) and the
// Kimi-Linear-48B-A3B release config.json (spec §1). The "-all-mla" variants are the paper's
// full-attention baseline: the same shape with MLA in every layer.
#include "model/config/presets.h"

#include <cstdint>

namespace deltaserve::model {
namespace {

// Layer maps of the release: a 3:1 KDA:MLA pattern; the last layer is always MLA.
std::vector<MixerKind> KdaMlaPattern(int64_t num_layers) {
  std::vector<MixerKind> mixers;
  for (int64_t i = 0; i < num_layers; ++i) {
    const bool mla = i % 4 == 3 || i == num_layers - 1;
    mixers.push_back(mla ? MixerKind::kMla : MixerKind::kKda);
  }
  return mixers;
}

// first_k_dense_replace = 1, moe_layer_freq = 1.
std::vector<FfnKind> FirstDenseThenMoe(int64_t num_layers) {
  std::vector<FfnKind> ffns(num_layers, FfnKind::kMoe);
  ffns[0] = FfnKind::kDense;
  return ffns;
}

KimiLinearConfig Tiny() {
  KimiLinearConfig c;
  c.vocab_size = 512;
  c.hidden_size = 128;
  c.num_layers = 4;
  c.intermediate_size = 256;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  c.max_position_embeddings = 1048576;
  c.eos_token_ids = {2};
  c.bos_token_id = 1;
  c.pad_token_id = 0;
  c.mla_num_heads = 2;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.kv_a_layernorm_eps = 1e-6;
  c.kda_num_heads = 2;
  c.kda_head_dim = 32;
  c.conv_kernel_size = 4;
  c.num_experts = 8;
  c.num_experts_per_token = 2;
  c.num_shared_experts = 1;
  c.moe_intermediate_size = 64;
  c.num_expert_group = 1;
  c.topk_group = 1;
  c.moe_renormalize = true;
  c.routed_scaling_factor = 2.446;
  c.mixer_kinds = KdaMlaPattern(c.num_layers);
  c.ffn_kinds = FirstDenseThenMoe(c.num_layers);
  return c;
}

KimiLinearConfig Small() {
  KimiLinearConfig c;
  c.vocab_size = 8192;
  c.hidden_size = 512;
  c.num_layers = 8;
  c.intermediate_size = 1536;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  c.max_position_embeddings = 1048576;
  c.eos_token_ids = {2};
  c.bos_token_id = 1;
  c.pad_token_id = 0;
  c.mla_num_heads = 8;
  c.kv_lora_rank = 128;
  c.qk_nope_head_dim = 64;
  c.qk_rope_head_dim = 32;
  c.v_head_dim = 64;
  c.kv_a_layernorm_eps = 1e-6;
  c.kda_num_heads = 8;
  c.kda_head_dim = 64;
  c.conv_kernel_size = 4;
  c.num_experts = 32;
  c.num_experts_per_token = 4;
  c.num_shared_experts = 1;
  c.moe_intermediate_size = 256;
  c.num_expert_group = 1;
  c.topk_group = 1;
  c.moe_renormalize = true;
  c.routed_scaling_factor = 2.446;
  c.mixer_kinds = KdaMlaPattern(c.num_layers);
  c.ffn_kinds = FirstDenseThenMoe(c.num_layers);
  return c;
}

KimiLinearConfig KimiLinear48bA3b() {
  KimiLinearConfig c;
  c.vocab_size = 163840;
  c.hidden_size = 2304;
  c.num_layers = 27;
  c.intermediate_size = 9216;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  c.max_position_embeddings = 1048576;
  c.eos_token_ids = {163586};
  c.bos_token_id = 163584;
  c.pad_token_id = 163839;
  c.mla_num_heads = 32;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.kv_a_layernorm_eps = 1e-6;
  c.kda_num_heads = 32;
  c.kda_head_dim = 128;
  c.conv_kernel_size = 4;
  c.num_experts = 256;
  c.num_experts_per_token = 8;
  c.num_shared_experts = 1;
  c.moe_intermediate_size = 1024;
  c.num_expert_group = 1;
  c.topk_group = 1;
  c.moe_renormalize = true;
  c.routed_scaling_factor = 2.446;
  // kda_layers [1,2,3,5,...,25,26], full_attn_layers [4,8,...,24,27] (1-based).
  c.mixer_kinds = KdaMlaPattern(c.num_layers);
  c.ffn_kinds = FirstDenseThenMoe(c.num_layers);
  return c;
}

// Every layer MLA; the KDA shape fields stay (Validate requires them) but no layer uses them.
KimiLinearConfig AllMla(KimiLinearConfig c) {
  c.mixer_kinds.assign(static_cast<size_t>(c.num_layers), MixerKind::kMla);
  return c;
}

}  // namespace

absl::StatusOr<KimiLinearConfig> PresetConfig(std::string_view name) {
  if (name == "tiny") return Tiny();
  if (name == "small") return Small();
  if (name == "small-all-mla") return AllMla(Small());
  if (name == "kimi-linear-48b-a3b") return KimiLinear48bA3b();
  if (name == "kimi-linear-48b-a3b-all-mla") return AllMla(KimiLinear48bA3b());
  std::string known;
  for (const std::string& preset : PresetNames()) {
    known += (known.empty() ? "" : ", ") + preset;
  }
  return absl::InvalidArgumentError("preset: expected one of " + known + ", got \"" +
                                    std::string(name) + "\"");
}

std::vector<std::string> PresetNames() {
  return {"tiny", "small", "small-all-mla", "kimi-linear-48b-a3b", "kimi-linear-48b-a3b-all-mla"};
}

}  // namespace deltaserve::model
