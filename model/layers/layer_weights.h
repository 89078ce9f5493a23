// Typed views of one model's weights, as the backend holds them, and their loading from a
// checkpoint. A scope selects a layer range and an expert range, so a pipeline stage or an
// expert shard loads only its part.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/checkpoint/checkpoint.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {

struct KdaWeights {
  kernels::TensorView q_proj, k_proj, v_proj;
  kernels::TensorView q_conv, k_conv, v_conv;  // [P, W] (checkpoint [P, 1, W])
  kernels::TensorView f_a, f_b, b_proj, g_a, g_b;
  kernels::TensorView a_log;    // [1, H] (checkpoint [1, 1, H, 1])
  kernels::TensorView dt_bias;  // [1, P]
  kernels::TensorView o_norm, o_proj;
};

struct MlaWeights {
  kernels::TensorView q_proj, kv_a_proj, kv_a_norm, kv_b_proj, o_proj;
};

struct DenseFfnWeights {
  kernels::TensorView gate, up, down;
};

struct MoeWeights {
  kernels::TensorView router;           // [E, D]
  kernels::TensorView correction_bias;  // [1, E]
  int64_t first_expert = 0;             // experts[i] is expert first_expert + i
  std::vector<kernels::ExpertWeights> experts;
  bool has_shared = false;
  DenseFfnWeights shared;
};

struct LayerWeights {
  kernels::TensorView input_norm, post_norm;
  KdaWeights kda;      // when the layer is KDA
  MlaWeights mla;      // when the layer is MLA
  DenseFfnWeights dense;  // when the FFN is dense
  MoeWeights moe;      // when the FFN is MoE
};

struct WeightScope {
  int64_t layer_begin = 0;
  int64_t layer_end = -1;   // -1: all layers
  int64_t expert_begin = 0;
  int64_t expert_end = -1;  // -1: all experts
  bool load_routed_experts = true;
  // Everything but the routed experts (embedding, norms, mixers, dense and shared FFNs, router,
  // head). An expert shard loads only its experts.
  bool load_dense = true;

  bool Covers(const KimiLinearConfig& config) const;  // the whole model
};

struct ModelWeights {
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  kernels::TensorView embed;       // when layer_begin == 0
  kernels::TensorView final_norm;  // when layer_end == num_layers
  kernels::TensorView lm_head;     // likewise (the embedding when tied)
  std::vector<LayerWeights> layers;  // layers[i] is layer layer_begin + i

  const LayerWeights& layer(int64_t index) const { return layers[index - layer_begin]; }
};

// Loads the scope's tensors through backend.AdoptWeight. With the whole model in scope, a tensor
// the model does not use is an error, so a mislabelled checkpoint cannot load silently. On every
// backend but "cpu" (which uses host weights in place) a generated tensor's host bytes are
// released as soon as the backend has adopted it.
absl::StatusOr<ModelWeights> LoadModelWeights(Checkpoint& checkpoint, kernels::Backend& backend,
                                              const WeightScope& scope);

}  // namespace deltaserve::model
