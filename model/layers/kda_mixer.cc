#include "model/layers/kda_mixer.h"

#include <array>
#include <vector>

namespace deltaserve::model {

using kernels::DType;
using kernels::Tensor;
using kernels::TensorView;

namespace {

kernels::KdaAlgorithm ChooseAlgorithm(KdaAlgorithmChoice choice, int64_t new_tokens) {
  switch (choice) {
    case KdaAlgorithmChoice::kChunked: return kernels::KdaAlgorithm::kChunked;
    case KdaAlgorithmChoice::kRecurrent: return kernels::KdaAlgorithm::kRecurrent;
    case KdaAlgorithmChoice::kAuto: break;
  }
  return new_tokens == 1 ? kernels::KdaAlgorithm::kRecurrent : kernels::KdaAlgorithm::kChunked;
}

}  // namespace

void KdaMixerForward(const Step& step, int64_t layer, const KdaWeights& w, TensorView x,
                     TensorView out) {
  kernels::Backend& backend = step.backend;
  const KimiLinearConfig& c = step.config;
  const int64_t t = step.num_tokens;
  const int64_t width = c.kda_projection_size();
  const int64_t d = c.kda_head_dim;

  Tensor projected = backend.Allocate(t, width, DType::kF32);
  std::array<Tensor, 3> convolved;
  const std::array<TensorView, 3> projections = {w.q_proj, w.k_proj, w.v_proj};
  const std::array<TensorView, 3> conv_weights = {w.q_conv, w.k_conv, w.v_conv};
  std::vector<kernels::ConvSequence> conv_seqs(step.seqs.size());
  for (size_t i = 0; i < 3; ++i) {
    backend.MatMul(x, projections[i], projected.view());
    for (size_t s = 0; s < step.seqs.size(); ++s) {
      conv_seqs[s] = {step.seqs[s].rows, step.seqs[s].state->kda(layer).conv_tails[i].data<float>()};
    }
    convolved[i] = backend.Allocate(t, width, DType::kF32);
    backend.CausalConvSilu(projected.view(), conv_weights[i], conv_seqs, convolved[i].view());
  }

  Tensor low_rank = backend.Allocate(t, d, DType::kF32);
  Tensor gate_logits = backend.Allocate(t, width, DType::kF32);
  backend.MatMul(x, w.f_a, low_rank.view());
  backend.MatMul(low_rank.view(), w.f_b, gate_logits.view());
  Tensor beta_logits = backend.Allocate(t, c.kda_num_heads, DType::kF32);
  backend.MatMul(x, w.b_proj, beta_logits.view());

  std::vector<kernels::KdaSequence> kda_seqs(step.seqs.size());
  for (size_t s = 0; s < step.seqs.size(); ++s) {
    const StepSequence& seq = step.seqs[s];
    kda_seqs[s] = {seq.rows, ChooseAlgorithm(step.options.kda_algorithm, seq.rows.length),
                   seq.state->kda(layer).recurrent.data<float>()};
  }
  const kernels::KdaInputs inputs{c.kda_num_heads, d, convolved[0].view(), convolved[1].view(),
                                  convolved[2].view(), gate_logits.view(), beta_logits.view(),
                                  w.a_log, w.dt_bias};
  Tensor attended = backend.Allocate(t, width, DType::kF32);
  backend.KdaAttention(inputs, kda_seqs, attended.view());

  // The output gate reuses the low-rank and full-width buffers.
  backend.MatMul(x, w.g_a, low_rank.view());
  backend.MatMul(low_rank.view(), w.g_b, gate_logits.view());
  backend.GatedRmsNorm(attended.view(), gate_logits.view(), w.o_norm, d,
                       static_cast<float>(c.rms_norm_eps), projected.view());
  backend.MatMul(projected.view(), w.o_proj, out);
}

}  // namespace deltaserve::model
