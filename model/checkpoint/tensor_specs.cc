// The official tensor layout (spec §6) computed from a configuration's shapes.
#include "model/checkpoint/tensor_specs.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace deltaserve::model {
namespace {

using kernels::DType;

class SpecList {
 public:
  void Add(std::string name, std::vector<int64_t> shape, TensorRole role,
           DType dtype = DType::kBF16) {
    specs_.push_back({std::move(name), std::move(shape), dtype, role});
  }
  void AddLayer(int64_t layer, const std::string& suffix, std::vector<int64_t> shape,
                TensorRole role, DType dtype = DType::kBF16) {
    Add(LayerTensorName(layer, suffix), std::move(shape), role, dtype);
  }
  std::vector<TensorSpec> Take() { return std::move(specs_); }

 private:
  std::vector<TensorSpec> specs_;
};

void AddKda(const KimiLinearConfig& c, int64_t layer, SpecList& specs) {
  const int64_t d_model = c.hidden_size;
  const int64_t heads = c.kda_num_heads;
  const int64_t head_dim = c.kda_head_dim;
  const int64_t proj = c.kda_projection_size();
  const auto add = [&](const std::string& suffix, std::vector<int64_t> shape, TensorRole role,
                       DType dtype = DType::kBF16) {
    specs.AddLayer(layer, "self_attn." + suffix, std::move(shape), role, dtype);
  };
  add("q_proj.weight", {proj, d_model}, TensorRole::kProjection);
  add("k_proj.weight", {proj, d_model}, TensorRole::kProjection);
  add("v_proj.weight", {proj, d_model}, TensorRole::kProjection);
  add("q_conv1d.weight", {proj, 1, c.conv_kernel_size}, TensorRole::kConvWeight);
  add("k_conv1d.weight", {proj, 1, c.conv_kernel_size}, TensorRole::kConvWeight);
  add("v_conv1d.weight", {proj, 1, c.conv_kernel_size}, TensorRole::kConvWeight);
  // The gates' low rank equals the head dim (spec §2.1).
  add("f_a_proj.weight", {head_dim, d_model}, TensorRole::kProjection);
  add("f_b_proj.weight", {proj, head_dim}, TensorRole::kProjection);
  add("A_log", {1, 1, heads, 1}, TensorRole::kALog, DType::kF32);
  add("dt_bias", {proj}, TensorRole::kDtBias, DType::kF32);
  add("b_proj.weight", {heads, d_model}, TensorRole::kProjection);
  add("g_a_proj.weight", {head_dim, d_model}, TensorRole::kProjection);
  add("g_b_proj.weight", {proj, head_dim}, TensorRole::kProjection);
  add("o_norm.weight", {head_dim}, TensorRole::kNormWeight);
  add("o_proj.weight", {d_model, proj}, TensorRole::kProjection);
}

void AddMla(const KimiLinearConfig& c, int64_t layer, SpecList& specs) {
  const int64_t d_model = c.hidden_size;
  const int64_t heads = c.mla_num_heads;
  const auto add = [&](const std::string& suffix, std::vector<int64_t> shape, TensorRole role) {
    specs.AddLayer(layer, "self_attn." + suffix, std::move(shape), role);
  };
  add("q_proj.weight", {heads * c.mla_qk_head_dim(), d_model}, TensorRole::kProjection);
  add("kv_a_proj_with_mqa.weight", {c.mla_latent_size(), d_model}, TensorRole::kProjection);
  add("kv_a_layernorm.weight", {c.kv_lora_rank}, TensorRole::kNormWeight);
  add("kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
      TensorRole::kProjection);
  add("o_proj.weight", {d_model, heads * c.v_head_dim}, TensorRole::kProjection);
}

void AddDense(const KimiLinearConfig& c, int64_t layer, SpecList& specs) {
  const int64_t d_model = c.hidden_size;
  const int64_t inner = c.intermediate_size;
  specs.AddLayer(layer, "mlp.gate_proj.weight", {inner, d_model}, TensorRole::kProjection);
  specs.AddLayer(layer, "mlp.up_proj.weight", {inner, d_model}, TensorRole::kProjection);
  specs.AddLayer(layer, "mlp.down_proj.weight", {d_model, inner}, TensorRole::kProjection);
}

void AddMoe(const KimiLinearConfig& c, int64_t layer, SpecList& specs) {
  const int64_t d_model = c.hidden_size;
  const int64_t inner = c.moe_intermediate_size;
  const std::string prefix = "block_sparse_moe.";
  specs.AddLayer(layer, prefix + "gate.weight", {c.num_experts, d_model},
                 TensorRole::kRouterWeight);
  specs.AddLayer(layer, prefix + "gate.e_score_correction_bias", {c.num_experts},
                 TensorRole::kRouterBias);
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const std::string expert = absl::StrCat(prefix, "experts.", e, ".");
    specs.AddLayer(layer, expert + "w1.weight", {inner, d_model}, TensorRole::kProjection);
    specs.AddLayer(layer, expert + "w2.weight", {d_model, inner}, TensorRole::kProjection);
    specs.AddLayer(layer, expert + "w3.weight", {inner, d_model}, TensorRole::kProjection);
  }
  if (c.num_shared_experts > 0) {
    const int64_t shared = inner * c.num_shared_experts;
    const std::string expert = prefix + "shared_experts.";
    specs.AddLayer(layer, expert + "gate_proj.weight", {shared, d_model}, TensorRole::kProjection);
    specs.AddLayer(layer, expert + "up_proj.weight", {shared, d_model}, TensorRole::kProjection);
    specs.AddLayer(layer, expert + "down_proj.weight", {d_model, shared}, TensorRole::kProjection);
  }
}

}  // namespace

std::string LayerTensorName(int64_t layer, const std::string& suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

std::vector<TensorSpec> ExpectedTensorSpecs(const KimiLinearConfig& config) {
  SpecList specs;
  const int64_t d_model = config.hidden_size;
  specs.Add("model.embed_tokens.weight", {config.vocab_size, d_model}, TensorRole::kEmbedding);
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    specs.AddLayer(layer, "input_layernorm.weight", {d_model}, TensorRole::kNormWeight);
    if (config.IsKda(layer)) {
      AddKda(config, layer, specs);
    } else {
      AddMla(config, layer, specs);
    }
    specs.AddLayer(layer, "post_attention_layernorm.weight", {d_model}, TensorRole::kNormWeight);
    if (config.IsMoe(layer)) {
      AddMoe(config, layer, specs);
    } else {
      AddDense(config, layer, specs);
    }
  }
  specs.Add("model.norm.weight", {d_model}, TensorRole::kNormWeight);
  if (!config.tie_word_embeddings) {
    specs.Add("lm_head.weight", {config.vocab_size, d_model}, TensorRole::kLmHead);
  }
  return specs.Take();
}

}  // namespace deltaserve::model
