#include "model/layers/layer_weights.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "model/checkpoint/tensor_specs.h"

namespace deltaserve::model {
namespace {

using kernels::TensorView;

class Loader {
 public:
  Loader(Checkpoint& checkpoint, kernels::Backend& backend)
      : checkpoint_(checkpoint), backend_(backend) {}

  // Loads `name` with checkpoint shape `shape`, viewed as a [rows, cols] matrix.
  absl::StatusOr<TensorView> Matrix(const std::string& name, const std::vector<int64_t>& shape,
                                    int64_t rows, int64_t cols) {
    DS_ASSIGN_OR_RETURN(TensorView host, HostMatrix(name, shape, rows, cols));
    return Adopted(name, backend_.AdoptWeight(host));
  }
  absl::StatusOr<TensorView> Linear(const std::string& name, int64_t out, int64_t in) {
    return Matrix(name, {out, in}, out, in);
  }
  // A linear layer whose products stay fp32 on every backend (Backend::AdoptWeightF32).
  absl::StatusOr<TensorView> LinearF32(const std::string& name, int64_t out, int64_t in) {
    DS_ASSIGN_OR_RETURN(TensorView host, HostMatrix(name, {out, in}, out, in));
    return Adopted(name, backend_.AdoptWeightF32(host));
  }
  absl::StatusOr<TensorView> Vector(const std::string& name, int64_t size) {
    return Matrix(name, {size}, 1, size);
  }

  Checkpoint& checkpoint() { return checkpoint_; }

 private:
  // Every backend but the CPU one copies a weight it adopts (kernels/backend.h, AdoptWeight), so
  // a generated tensor's host bytes can go at once: host memory then stays near one tensor while
  // a model larger than the disk loads onto a GPU.
  TensorView Adopted(const std::string& name, TensorView adopted) {
    if (backend_.name() != "cpu") checkpoint_.Release(name);
    return adopted;
  }

  // The checkpoint's tensor `name` (validated against `shape`) viewed as [rows, cols] in place.
  absl::StatusOr<TensorView> HostMatrix(const std::string& name, const std::vector<int64_t>& shape,
                                        int64_t rows, int64_t cols) {
    DS_ASSIGN_OR_RETURN(CheckpointTensor tensor, checkpoint_.Get(name, shape));
    return TensorView{const_cast<void*>(tensor.entry->data), tensor.entry->dtype, rows, cols, cols};
  }

  Checkpoint& checkpoint_;
  kernels::Backend& backend_;
};

absl::StatusOr<KdaWeights> LoadKda(Loader& loader, const KimiLinearConfig& c, int64_t layer) {
  const int64_t d = c.kda_head_dim;
  const int64_t heads = c.kda_num_heads;
  const int64_t p = heads * d;
  const int64_t hidden = c.hidden_size;
  const int64_t w = c.conv_kernel_size;
  auto name = [&](const char* suffix) { return LayerTensorName(layer, absl::StrCat("self_attn.", suffix)); };
  KdaWeights k;
  DS_ASSIGN_OR_RETURN(k.q_proj, loader.Linear(name("q_proj.weight"), p, hidden));
  DS_ASSIGN_OR_RETURN(k.k_proj, loader.Linear(name("k_proj.weight"), p, hidden));
  DS_ASSIGN_OR_RETURN(k.v_proj, loader.Linear(name("v_proj.weight"), p, hidden));
  DS_ASSIGN_OR_RETURN(k.q_conv, loader.Matrix(name("q_conv1d.weight"), {p, 1, w}, p, w));
  DS_ASSIGN_OR_RETURN(k.k_conv, loader.Matrix(name("k_conv1d.weight"), {p, 1, w}, p, w));
  DS_ASSIGN_OR_RETURN(k.v_conv, loader.Matrix(name("v_conv1d.weight"), {p, 1, w}, p, w));
  DS_ASSIGN_OR_RETURN(k.f_a, loader.Linear(name("f_a_proj.weight"), d, hidden));
  DS_ASSIGN_OR_RETURN(k.f_b, loader.Linear(name("f_b_proj.weight"), p, d));
  DS_ASSIGN_OR_RETURN(k.b_proj, loader.Linear(name("b_proj.weight"), heads, hidden));
  DS_ASSIGN_OR_RETURN(k.g_a, loader.Linear(name("g_a_proj.weight"), d, hidden));
  DS_ASSIGN_OR_RETURN(k.g_b, loader.Linear(name("g_b_proj.weight"), p, d));
  DS_ASSIGN_OR_RETURN(k.a_log, loader.Matrix(name("A_log"), {1, 1, heads, 1}, 1, heads));
  DS_ASSIGN_OR_RETURN(k.dt_bias, loader.Vector(name("dt_bias"), p));
  DS_ASSIGN_OR_RETURN(k.o_norm, loader.Vector(name("o_norm.weight"), d));
  DS_ASSIGN_OR_RETURN(k.o_proj, loader.Linear(name("o_proj.weight"), hidden, p));
  return k;
}

absl::StatusOr<MlaWeights> LoadMla(Loader& loader, const KimiLinearConfig& c, int64_t layer) {
  const int64_t heads = c.mla_num_heads;
  const int64_t hidden = c.hidden_size;
  auto name = [&](const char* suffix) { return LayerTensorName(layer, absl::StrCat("self_attn.", suffix)); };
  MlaWeights m;
  DS_ASSIGN_OR_RETURN(m.q_proj, loader.Linear(name("q_proj.weight"), heads * c.mla_qk_head_dim(), hidden));
  DS_ASSIGN_OR_RETURN(m.kv_a_proj,
                      loader.Linear(name("kv_a_proj_with_mqa.weight"), c.mla_latent_size(), hidden));
  DS_ASSIGN_OR_RETURN(m.kv_a_norm, loader.Vector(name("kv_a_layernorm.weight"), c.kv_lora_rank));
  DS_ASSIGN_OR_RETURN(m.kv_b_proj,
                      loader.Linear(name("kv_b_proj.weight"),
                                    heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank));
  DS_ASSIGN_OR_RETURN(m.o_proj, loader.Linear(name("o_proj.weight"), hidden, heads * c.v_head_dim));
  return m;
}

absl::StatusOr<DenseFfnWeights> LoadSwiGlu(Loader& loader, const std::string& prefix,
                                           const char* gate, const char* up, const char* down,
                                           int64_t hidden, int64_t inner) {
  DenseFfnWeights f;
  DS_ASSIGN_OR_RETURN(f.gate, loader.Linear(absl::StrCat(prefix, gate, ".weight"), inner, hidden));
  DS_ASSIGN_OR_RETURN(f.up, loader.Linear(absl::StrCat(prefix, up, ".weight"), inner, hidden));
  DS_ASSIGN_OR_RETURN(f.down, loader.Linear(absl::StrCat(prefix, down, ".weight"), hidden, inner));
  return f;
}

// Moonshot's release names the dense FFN `mlp.*`; transformers saves it as `block_sparse_moe.*`.
absl::StatusOr<DenseFfnWeights> LoadDense(Loader& loader, const KimiLinearConfig& c, int64_t layer) {
  const std::string official = LayerTensorName(layer, "mlp.");
  const std::string transformers = LayerTensorName(layer, "block_sparse_moe.");
  const bool has_official = loader.checkpoint().Has(official + "gate_proj.weight");
  const bool has_transformers = loader.checkpoint().Has(transformers + "gate_proj.weight");
  if (has_official && has_transformers) {
    return absl::InvalidArgumentError(absl::StrCat(
        loader.checkpoint().dir(), ": layer ", layer, " has both ", official, "gate_proj.weight and ",
        transformers, "gate_proj.weight; which one is the dense FFN is ambiguous"));
  }
  return LoadSwiGlu(loader, has_transformers ? transformers : official, "gate_proj", "up_proj",
                    "down_proj", c.hidden_size, c.intermediate_size);
}

absl::StatusOr<MoeWeights> LoadMoe(Loader& loader, const KimiLinearConfig& c, int64_t layer,
                                   const WeightScope& scope) {
  const std::string prefix = LayerTensorName(layer, "block_sparse_moe.");
  MoeWeights m;
  if (scope.load_dense) {
    // fp32 router logits, as the reference computes them: a near tie decides an expert.
    DS_ASSIGN_OR_RETURN(m.router, loader.LinearF32(prefix + "gate.weight", c.num_experts, c.hidden_size));
    DS_ASSIGN_OR_RETURN(m.correction_bias,
                        loader.Vector(prefix + "gate.e_score_correction_bias", c.num_experts));
  }
  if (scope.load_routed_experts) {
    const int64_t end = scope.expert_end < 0 ? c.num_experts : scope.expert_end;
    m.first_expert = scope.expert_begin;
    for (int64_t e = scope.expert_begin; e < end; ++e) {
      DS_ASSIGN_OR_RETURN(DenseFfnWeights expert,
                          LoadSwiGlu(loader, absl::StrCat(prefix, "experts.", e, "."), "w1", "w3",
                                     "w2", c.hidden_size, c.moe_intermediate_size));
      m.experts.push_back({expert.gate, expert.up, expert.down});
    }
  }
  if (c.num_shared_experts > 0 && scope.load_dense) {
    m.has_shared = true;
    DS_ASSIGN_OR_RETURN(m.shared, LoadSwiGlu(loader, prefix + "shared_experts.", "gate_proj",
                                             "up_proj", "down_proj", c.hidden_size,
                                             c.moe_intermediate_size * c.num_shared_experts));
  }
  return m;
}

}  // namespace

bool WeightScope::Covers(const KimiLinearConfig& config) const {
  return layer_begin == 0 && (layer_end < 0 || layer_end == config.num_layers) && expert_begin == 0 &&
         (expert_end < 0 || expert_end == config.num_experts) && load_routed_experts && load_dense;
}

absl::StatusOr<ModelWeights> LoadModelWeights(Checkpoint& checkpoint, kernels::Backend& backend,
                                              const WeightScope& scope) {
  const KimiLinearConfig& c = checkpoint.config();
  const int64_t layer_end = scope.layer_end < 0 ? c.num_layers : scope.layer_end;
  const int64_t expert_end = scope.expert_end < 0 ? c.num_experts : scope.expert_end;
  if (scope.layer_begin < 0 || scope.layer_begin >= layer_end || layer_end > c.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer range [", scope.layer_begin, ", ",
                                                   layer_end, ") is outside the model's ",
                                                   c.num_layers, " layers"));
  }
  if (scope.expert_begin < 0 || scope.expert_begin > expert_end || expert_end > c.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("expert range [", scope.expert_begin, ", ",
                                                   expert_end, ") is outside the model's ",
                                                   c.num_experts, " experts"));
  }
  Loader loader(checkpoint, backend);
  ModelWeights weights;
  weights.layer_begin = scope.layer_begin;
  weights.layer_end = layer_end;
  if (scope.layer_begin == 0 && scope.load_dense) {
    DS_ASSIGN_OR_RETURN(weights.embed,
                        loader.Linear("model.embed_tokens.weight", c.vocab_size, c.hidden_size));
  }
  for (int64_t layer = scope.layer_begin; layer < layer_end; ++layer) {
    LayerWeights lw;
    if (scope.load_dense) {
      DS_ASSIGN_OR_RETURN(lw.input_norm, loader.Vector(LayerTensorName(layer, "input_layernorm.weight"),
                                                       c.hidden_size));
      DS_ASSIGN_OR_RETURN(lw.post_norm, loader.Vector(LayerTensorName(layer, "post_attention_layernorm.weight"),
                                                      c.hidden_size));
      if (c.IsKda(layer)) {
        DS_ASSIGN_OR_RETURN(lw.kda, LoadKda(loader, c, layer));
      } else {
        DS_ASSIGN_OR_RETURN(lw.mla, LoadMla(loader, c, layer));
      }
      if (!c.IsMoe(layer)) {
        DS_ASSIGN_OR_RETURN(lw.dense, LoadDense(loader, c, layer));
      }
    }
    if (c.IsMoe(layer)) {
      DS_ASSIGN_OR_RETURN(lw.moe, LoadMoe(loader, c, layer, scope));
    }
    weights.layers.push_back(std::move(lw));
  }
  if (layer_end == c.num_layers && scope.load_dense) {
    DS_ASSIGN_OR_RETURN(weights.final_norm, loader.Vector("model.norm.weight", c.hidden_size));
    if (c.tie_word_embeddings) {
      DS_ASSIGN_OR_RETURN(weights.lm_head,
                          loader.Linear("model.embed_tokens.weight", c.vocab_size, c.hidden_size));
    } else {
      DS_ASSIGN_OR_RETURN(weights.lm_head, loader.Linear("lm_head.weight", c.vocab_size, c.hidden_size));
    }
  }
  if (scope.Covers(c)) {
    const std::vector<std::string> unused = checkpoint.Unclaimed();
    if (!unused.empty()) {
      constexpr size_t kShown = 8;
      std::vector<std::string> shown;
      for (size_t i = 0; i < std::min(unused.size(), kShown); ++i) {
        shown.push_back(absl::StrCat(unused[i], " (in ", *checkpoint.tensors().at(unused[i]).file, ")"));
      }
      return absl::InvalidArgumentError(absl::StrCat(
          checkpoint.dir(), ": ", unused.size(), " unexpected tensor(s) the model does not use: ",
          absl::StrJoin(shown, ", "), unused.size() > kShown ? ", ..." : ""));
    }
  }
  return weights;
}

}  // namespace deltaserve::model
