// The MLA token mixer of one layer (spec §3): query and latent projections, the normalised latent
// appended to each sequence's cache, attention over it, output projection.
#pragma once

#include "model/layers/layer_weights.h"
#include "model/layers/step.h"

namespace deltaserve::model {

// x is the layer's normalised input [T, D]; out [T, D] receives the mixer output.
void MlaMixerForward(const Step& step, int64_t layer, const MlaWeights& weights,
                     kernels::TensorView x, kernels::TensorView out);

}  // namespace deltaserve::model
