#include "model/layers/mla_mixer.h"

#include <array>
#include <cmath>
#include <vector>

namespace deltaserve::model {

using kernels::DType;
using kernels::Tensor;
using kernels::TensorView;

kernels::MlaForm ChooseMlaForm(const LayerOptions& options, int64_t new_tokens, int64_t cached,
                               const kernels::MlaFormLimits& limits) {
  switch (options.mla_form) {
    case MlaFormChoice::kExpanded: return kernels::MlaForm::kExpanded;
    case MlaFormChoice::kAbsorbed: return kernels::MlaForm::kAbsorbed;
    case MlaFormChoice::kAuto: break;
  }
  const bool too_long = limits.expanded_window_keys == 0 && cached + new_tokens > options.mla_expanded_max_keys;
  const bool absorbed = new_tokens <= limits.absorbed_max_new_tokens || too_long;
  return absorbed ? kernels::MlaForm::kAbsorbed : kernels::MlaForm::kExpanded;
}

DType MlaMixerInputDType(const kernels::Backend& backend, const MlaWeights& weights, int64_t rows) {
  for (const TensorView w : {weights.q_proj, weights.kv_a_proj}) {
    if (backend.ProductInputDType(rows, w) != DType::kBF16) return DType::kF32;
  }
  return DType::kBF16;
}

void MlaMixerForward(const Step& step, int64_t layer, const MlaWeights& w, TensorView x,
                     TensorView out) {
  kernels::Backend& backend = step.backend;
  const KimiLinearConfig& c = step.config;
  const int64_t t = step.num_tokens;
  const int64_t rank = c.kv_lora_rank;

  Tensor q = backend.Allocate(t, c.mla_num_heads * c.mla_qk_head_dim(), DType::kF32);
  Tensor compressed = backend.Allocate(t, c.mla_latent_size(), DType::kF32);
  const std::array<kernels::MatMulProduct, 2> from_x = {{{x, w.q_proj, q.view()},
                                                         {x, w.kv_a_proj, compressed.view()}}};
  backend.MatMuls(from_x);
  // The cached latent: RMSNorm of the first kv_lora_rank columns, k_pe as it is.
  Tensor latent = backend.Allocate(t, c.mla_latent_size(), DType::kF32);
  backend.RmsNorm(compressed.view().Cols(0, rank), w.kv_a_norm,
                  static_cast<float>(c.kv_a_layernorm_eps), latent.view().Cols(0, rank));
  backend.Copy(compressed.view().Cols(rank, c.qk_rope_head_dim),
               latent.view().Cols(rank, c.qk_rope_head_dim));

  const kernels::MlaParams params{
      c.mla_num_heads, rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
      1.0f / std::sqrt(static_cast<float>(c.mla_qk_head_dim()))};
  const kernels::MlaFormLimits limits = backend.MlaForms(params);
  std::vector<kernels::MlaSequence> mla_seqs(step.seqs.size());
  for (size_t s = 0; s < step.seqs.size(); ++s) {
    const StepSequence& seq = step.seqs[s];
    seq.state->ReserveLatent(layer, seq.rows.length);
    MlaLayerState& cache = seq.state->mla(layer);
    // Pages the backend could not allocate: it holds the failure, which fails the step.
    if (cache.capacity() < cache.num_cached + seq.rows.length) return;
    mla_seqs[s] = {seq.rows, ChooseMlaForm(step.options, seq.rows.length, cache.num_cached, limits),
                   cache.view(), cache.num_cached};
  }
  Tensor attended = backend.Allocate(t, c.mla_num_heads * c.v_head_dim, DType::kF32);
  backend.MlaAttention(params, q.view(), latent.view(), w.kv_b_proj, mla_seqs, attended.view());
  for (const StepSequence& seq : step.seqs) seq.state->mla(layer).num_cached += seq.rows.length;
  backend.MatMul(attended.view(), w.o_proj, out);
}

}  // namespace deltaserve::model
