// The KDA token mixer of one layer (spec §2.2): projections, short conv, gate, beta, delta rule,
// gated RMSNorm, output projection.
#pragma once

#include "model/layers/layer_weights.h"
#include "model/layers/step.h"

namespace deltaserve::model {

// The dtype the mixer takes x in for a step of `rows` tokens: what its products of x read
// (Backend::ProductInputDType) where that is BF16 for all of them, else F32.
kernels::DType KdaMixerInputDType(const kernels::Backend& backend, const KdaWeights& weights, int64_t rows);

// x is the layer's normalised input [T, D], F32 or in KdaMixerInputDType; out [T, D] receives the
// mixer output.
void KdaMixerForward(const Step& step, int64_t layer, const KdaWeights& weights,
                     kernels::TensorView x, kernels::TensorView out);

}  // namespace deltaserve::model
