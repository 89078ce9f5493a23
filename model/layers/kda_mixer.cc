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

// The forget gate's logits f_b(f_a(x)) (before dt_bias and softplus; in the backend's KDA
// activation dtype), beta's b_proj(x), and the low-rank buffer the output gate reuses.
struct GateLogits {
  Tensor low_rank, gate_logits, beta_logits;
};

GateLogits ProjectGates(const Step& step, const KdaWeights& w, TensorView x) {
  kernels::Backend& backend = step.backend;
  const KimiLinearConfig& c = step.config;
  GateLogits g;
  g.low_rank = backend.Allocate(step.num_tokens, c.kda_head_dim, DType::kF32);
  g.gate_logits = backend.Allocate(step.num_tokens, c.kda_projection_size(), backend.KdaActivationDType());
  backend.MatMul(x, w.f_a, g.low_rank.view());
  backend.MatMul(g.low_rank.view(), w.f_b, g.gate_logits.view());
  g.beta_logits = backend.Allocate(step.num_tokens, c.kda_num_heads, DType::kF32);
  backend.MatMul(x, w.b_proj, g.beta_logits.view());
  return g;
}

// A step where every sequence brings one token that runs recurrently: the backend's
// KdaDecodeStep (convs, delta rule and output norm in one call; fused on the GPU).
bool IsDecodeStep(const Step& step) {
  if (step.seqs.empty() ||
      ChooseAlgorithm(step.options.kda_algorithm, 1) != kernels::KdaAlgorithm::kRecurrent) {
    return false;
  }
  for (const StepSequence& seq : step.seqs) {
    if (seq.rows.length != 1) return false;
  }
  return true;
}

void KdaDecodeForward(const Step& step, int64_t layer, const KdaWeights& w, TensorView x, TensorView out) {
  kernels::Backend& backend = step.backend;
  const KimiLinearConfig& c = step.config;
  const int64_t t = step.num_tokens;
  const int64_t width = c.kda_projection_size();
  const int64_t d = c.kda_head_dim;
  // Every projection of x together, then both low-rank expansions together (one launch each
  // where the backend fuses them).
  std::array<Tensor, 3> projected;
  for (Tensor& p : projected) p = backend.Allocate(t, width, DType::kF32);
  GateLogits gates;
  gates.low_rank = backend.Allocate(t, d, DType::kF32);
  gates.beta_logits = backend.Allocate(t, c.kda_num_heads, DType::kF32);
  Tensor out_low_rank = backend.Allocate(t, d, DType::kF32);
  const std::array<kernels::MatMulProduct, 6> from_x = {{{x, w.q_proj, projected[0].view()},
                                                         {x, w.k_proj, projected[1].view()},
                                                         {x, w.v_proj, projected[2].view()},
                                                         {x, w.f_a, gates.low_rank.view()},
                                                         {x, w.b_proj, gates.beta_logits.view()},
                                                         {x, w.g_a, out_low_rank.view()}}};
  backend.MatMuls(from_x);
  gates.gate_logits = backend.Allocate(t, width, DType::kF32);
  Tensor out_gate = backend.Allocate(t, width, DType::kF32);
  const std::array<kernels::MatMulProduct, 2> expansions = {{{gates.low_rank.view(), w.f_b, gates.gate_logits.view()},
                                                             {out_low_rank.view(), w.g_b, out_gate.view()}}};
  backend.MatMuls(expansions);

  kernels::KdaDecodeInputs in;
  in.core = {c.kda_num_heads, d, projected[0].view(), projected[1].view(), projected[2].view(),
             gates.gate_logits.view(), gates.beta_logits.view(), w.a_log, w.dt_bias};
  in.conv_weights[0] = w.q_conv;
  in.conv_weights[1] = w.k_conv;
  in.conv_weights[2] = w.v_conv;
  in.out_gate = out_gate.view();
  in.out_norm = w.o_norm;
  in.eps = static_cast<float>(c.rms_norm_eps);
  std::vector<kernels::KdaDecodeSequence> seqs(step.seqs.size());
  for (size_t s = 0; s < step.seqs.size(); ++s) {
    KdaLayerState& state = step.seqs[s].state->kda(layer);
    seqs[s].row = step.seqs[s].rows.begin;
    seqs[s].state = state.recurrent.data<float>();
    for (size_t i = 0; i < 3; ++i) seqs[s].conv_tails[i] = state.conv_tails[i].data<float>();
  }
  Tensor normed = backend.Allocate(t, width, DType::kF32);
  backend.KdaDecodeStep(in, seqs, normed.view());
  backend.MatMul(normed.view(), w.o_proj, out);
}

}  // namespace

DType KdaMixerInputDType(const kernels::Backend& backend, const KdaWeights& weights, int64_t rows) {
  for (const TensorView w :
       {weights.q_proj, weights.k_proj, weights.v_proj, weights.f_a, weights.b_proj, weights.g_a}) {
    if (backend.ProductInputDType(rows, w) != DType::kBF16) return DType::kF32;
  }
  return DType::kBF16;
}

void KdaMixerForward(const Step& step, int64_t layer, const KdaWeights& w, TensorView x,
                     TensorView out) {
  if (IsDecodeStep(step)) {
    KdaDecodeForward(step, layer, w, x, out);
    return;
  }
  kernels::Backend& backend = step.backend;
  const KimiLinearConfig& c = step.config;
  const int64_t t = step.num_tokens;
  const int64_t width = c.kda_projection_size();
  const int64_t d = c.kda_head_dim;
  // The core's inputs and read in the backend's KDA activation dtype (bf16 on the GPU).
  const DType activations = backend.KdaActivationDType();

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
    convolved[i] = backend.Allocate(t, width, activations);
    backend.CausalConvSilu(projected.view(), conv_weights[i], conv_seqs, convolved[i].view());
  }

  GateLogits gates = ProjectGates(step, w, x);
  std::vector<kernels::KdaSequence> kda_seqs(step.seqs.size());
  for (size_t s = 0; s < step.seqs.size(); ++s) {
    const StepSequence& seq = step.seqs[s];
    kda_seqs[s] = {seq.rows, ChooseAlgorithm(step.options.kda_algorithm, seq.rows.length),
                   seq.state->kda(layer).recurrent.data<float>()};
  }
  const kernels::KdaInputs inputs{c.kda_num_heads, d, convolved[0].view(), convolved[1].view(),
                                  convolved[2].view(), gates.gate_logits.view(),
                                  gates.beta_logits.view(), w.a_log, w.dt_bias};
  Tensor attended = backend.Allocate(t, width, activations);
  backend.KdaAttention(inputs, kda_seqs, attended.view());

  // The output gate reuses the low-rank and full-width buffers. The norm writes o_proj's input in
  // the dtype o_proj reads (bf16 on the GPU at serving precision past decode sizes, into the fp32
  // buffer's first half: no copy to round).
  backend.MatMul(x, w.g_a, gates.low_rank.view());
  backend.MatMul(gates.low_rank.view(), w.g_b, gates.gate_logits.view());
  const DType normed_dtype = backend.ProductInputDType(t, w.o_proj) == DType::kBF16 ? DType::kBF16 : DType::kF32;
  const TensorView normed = kernels::MakeView(projected.view().data, normed_dtype, t, width);
  backend.GatedRmsNorm(attended.view(), gates.gate_logits.view(), w.o_norm, d,
                       static_cast<float>(c.rms_norm_eps), normed);
  backend.MatMul(normed, w.o_proj, out);
}

}  // namespace deltaserve::model
