// The feed-forward half of a decoder layer (spec §4): dense SwiGLU, or MoE with sigmoid routing,
// routed experts (through an ExpertRunner) and the shared expert.
#pragma once

#include "absl/status/status.h"
#include "model/layers/expert_runner.h"
#include "model/layers/layer_weights.h"
#include "model/layers/step.h"

namespace deltaserve::model {

// out = down(silu(gate · x) ⊙ (up · x)).
void DenseFfnForward(kernels::Backend& backend, const DenseFfnWeights& weights,
                     kernels::TensorView x, kernels::TensorView out);

// out = Σ_k w_k · expert_k(x) + shared(x).
absl::Status MoeFfnForward(const Step& step, int64_t layer, const MoeWeights& weights,
                           ExpertRunner& experts, kernels::TensorView x, kernels::TensorView out);

}  // namespace deltaserve::model
