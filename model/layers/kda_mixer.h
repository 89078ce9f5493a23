// The KDA token mixer of one layer (spec §2.2): projections, short conv, gate, beta, delta rule,
// gated RMSNorm, output projection.
#pragma once

#include "model/layers/layer_weights.h"
#include "model/layers/step.h"

namespace deltaserve::model {

// x is the layer's normalised input [T, D]; out [T, D] receives the mixer output.
void KdaMixerForward(const Step& step, int64_t layer, const KdaWeights& weights,
                     kernels::TensorView x, kernels::TensorView out);

}  // namespace deltaserve::model
