// The MLA token mixer of one layer (spec §3): query and latent projections, the normalised latent
// appended to each sequence's cache, attention over it, output projection.
#pragma once

#include "model/layers/layer_weights.h"
#include "model/layers/step.h"

namespace deltaserve::model {

// The dtype the mixer takes x in for a step of `rows` tokens: what its products of x read
// (Backend::ProductInputDType) where that is BF16 for all of them, else F32.
kernels::DType MlaMixerInputDType(const kernels::Backend& backend, const MlaWeights& weights, int64_t rows);

// The MLA form for a sequence of `new_tokens` on top of `cached` keys on a backend with these
// limits (Backend::MlaForms): absorbed for at most limits.absorbed_max_new_tokens new tokens, or
// for more than options.mla_expanded_max_keys keys in all where the backend expands whole
// histories at once, expanded otherwise, unless options.mla_form forces one.
kernels::MlaForm ChooseMlaForm(const LayerOptions& options, int64_t new_tokens, int64_t cached,
                               const kernels::MlaFormLimits& limits);

// x is the layer's normalised input [T, D], F32 or in MlaMixerInputDType; out [T, D] receives the
// mixer output.
void MlaMixerForward(const Step& step, int64_t layer, const MlaWeights& weights,
                     kernels::TensorView x, kernels::TensorView out);

}  // namespace deltaserve::model
