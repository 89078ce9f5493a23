// The checkpoint's tensor names and shapes for a configuration (spec §6), in one place for the
// loader, the checker of unexpected tensors and the random-checkpoint writer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {

// What a tensor is for; init-model picks its random distribution from this.
enum class TensorRole : uint8_t {
  kEmbedding,
  kLmHead,
  kNormWeight,      // RMSNorm weights (input, post-attention, final, kv_a, o_norm)
  kProjection,      // any [out, in] linear weight
  kConvWeight,      // KDA q/k/v short conv [C, 1, W]
  kALog,            // KDA A_log [1, 1, H, 1]
  kDtBias,          // KDA dt_bias [H*d]
  kRouterWeight,    // MoE gate.weight [E, D]
  kRouterBias,      // MoE gate.e_score_correction_bias [E]
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  kernels::DType dtype = kernels::DType::kBF16;  // as in the official release
  TensorRole role = TensorRole::kProjection;
};

// "model.layers.{layer}.{suffix}".
std::string LayerTensorName(int64_t layer, const std::string& suffix);

// Every tensor of the official layout, in a stable order (embedding, layers 0..L-1, norm, head).
// Dense layers use the official `mlp.*` names; lm_head is omitted when embeddings are tied.
// Precondition: config.Validate() is OK (mixer_kinds and ffn_kinds cover every layer).
std::vector<TensorSpec> ExpectedTensorSpecs(const KimiLinearConfig& config);

}  // namespace deltaserve::model
