#include "kernels/backend.h"

#include <array>
#include <functional>
#include <vector>

#include "base/check.h"
#include "kernels/greedy.h"
#include "kernels/sampling.h"

namespace deltaserve::kernels {

void Backend::KdaDecodeStep(const KdaDecodeInputs& in, std::span<const KdaDecodeSequence> seqs,
                            TensorView out) {
  const int64_t t = in.core.q.rows, width = in.core.q.cols;
  const std::array<TensorView, 3> projections = {in.core.q, in.core.k, in.core.v};
  std::array<Tensor, 3> convolved;
  std::vector<ConvSequence> conv(seqs.size());
  for (size_t i = 0; i < 3; ++i) {
    for (size_t s = 0; s < seqs.size(); ++s) conv[s] = {{seqs[s].row, 1}, seqs[s].conv_tails[i]};
    convolved[i] = Allocate(t, width, DType::kF32);
    CausalConvSilu(projections[i], in.conv_weights[i], conv, convolved[i].view());
  }
  KdaInputs core = in.core;
  core.q = convolved[0].view();
  core.k = convolved[1].view();
  core.v = convolved[2].view();
  std::vector<KdaSequence> kda(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    kda[s] = {{seqs[s].row, 1}, KdaAlgorithm::kRecurrent, seqs[s].state};
  }
  Tensor attended = Allocate(t, width, DType::kF32);
  KdaAttention(core, kda, attended.view());
  GatedRmsNorm(attended.view(), in.out_gate, in.out_norm, in.core.head_dim, in.eps, out);
}

RoutedMoe RouteMoe(Backend& backend, TensorView x, TensorView router, TensorView correction_bias,
                   const MoeRouting& routing, const ExpertWeights* shared) {
  const int64_t t = x.rows, k = routing.top_k;
  RoutedMoe r;
  // The router and the shared expert's gate and up products all read x: issued together.
  Tensor logits = backend.Allocate(t, router.rows, DType::kF32);
  std::array<MatMulProduct, 3> from_x = {{{x, router, logits.view()}}};
  size_t products = 1;
  ProductInput shared_x;
  if (shared != nullptr) {
    r.shared_gate = backend.Allocate(t, shared->gate.rows, DType::kF32);
    r.shared_up = backend.Allocate(t, shared->up.rows, DType::kF32);
    shared_x = backend.PrepareProductInput(x, shared->gate);
    from_x[products++] = {shared_x.For(shared->gate), shared->gate, r.shared_gate.view()};
    from_x[products++] = {shared_x.For(shared->up), shared->up, r.shared_up.view()};
  }
  backend.MatMuls(std::span<const MatMulProduct>(from_x.data(), products));
  r.ids = backend.Allocate(t, k, DType::kI32);
  r.weights = backend.Allocate(t, k, DType::kF32);
  backend.MoeRoute(logits.view(), correction_bias, routing, r.ids.view(), r.weights.view());
  return r;
}

bool ComposeMoeFfn(Backend& backend, TensorView x, TensorView router, TensorView correction_bias,
                   const MoeRouting& routing, const ExpertWeights* shared, TensorView out,
                   const std::function<bool(TensorView ids, TensorView slot_out)>& run_experts,
                   DType slot_dtype) {
  RoutedMoe r = RouteMoe(backend, x, router, correction_bias, routing, shared);
  Tensor slot_out = backend.Allocate(x.rows * routing.top_k, x.cols, slot_dtype);
  if (!run_experts(r.ids.view(), slot_out.view())) return false;
  // out = shared expert (or zero), then the routed experts' weighted sum added to it.
  if (shared != nullptr) {
    backend.SwiGlu(r.shared_gate.view(), r.shared_up.view(), r.shared_gate.view());
    backend.MatMul(r.shared_gate.view(), shared->down, out);
  } else {
    backend.Zero(out);
  }
  backend.MoeCombine(slot_out.view(), r.weights.view(), out);
  return true;
}

void Backend::MoeFfn(TensorView x, TensorView router, TensorView correction_bias, const MoeRouting& routing,
                     std::span<const ExpertWeights> experts, const ExpertWeights* shared, TensorView out) {
  ComposeMoeFfn(
      *this, x, router, correction_bias, routing, shared, out,
      [&](TensorView ids, TensorView slot_out) {
        MoeExperts(x, ids, experts, 0, slot_out);
        return true;
      },
      MoeSlotDType(x, routing.top_k, experts));
}

ProductInput Backend::PrepareProductInput(TensorView x, TensorView /*w*/) { return {x, Tensor()}; }

void Backend::MatMuls(std::span<const MatMulProduct> products) {
  for (const MatMulProduct& p : products) MatMul(p.x, p.w, p.y);
}

void Backend::AddRmsNorm(TensorView acc, TensorView x, TensorView weight, float eps, TensorView out) {
  Add(acc, x);
  RmsNorm(acc, weight, eps, out);
}

void Backend::ArgmaxRows(TensorView x, TensorView ids) {
  std::vector<float> host(static_cast<size_t>(x.rows * x.cols));
  Download(x, host.data());
  std::vector<int32_t> best(static_cast<size_t>(x.rows));
  for (int64_t r = 0; r < x.rows; ++r) {
    best[r] = static_cast<int32_t>(GreedyArgmax({host.data() + r * x.cols, static_cast<size_t>(x.cols)}));
  }
  Upload(best.data(), ids);
}

void Backend::ApplyPenalties(TensorView x, std::span<const LogitPenalty> penalties) {
  if (penalties.empty()) return;
  std::vector<float> host(static_cast<size_t>(x.rows * x.cols));
  Download(x, host.data());
  for (const LogitPenalty& p : penalties) {
    if (p.token < 0) continue;
    DS_CHECK(p.row >= 0 && p.row < x.rows && p.token < x.cols);
    float& logit = host[static_cast<size_t>(p.row * x.cols + p.token)];
    logit = PenalizedLogit(logit, p);
  }
  Upload(host.data(), x);
}

void Backend::SampleRows(TensorView x, std::span<const RowSampling> draws, TensorView ids) {
  DS_CHECK(static_cast<int64_t>(draws.size()) == x.rows && ids.rows == x.rows);
  std::vector<float> host(static_cast<size_t>(x.rows * x.cols));
  Download(x, host.data());
  std::vector<int32_t> tokens(static_cast<size_t>(x.rows));
  std::vector<float> scratch;
  for (int64_t r = 0; r < x.rows; ++r) {
    const std::span<float> row(host.data() + r * x.cols, static_cast<size_t>(x.cols));
    tokens[r] = static_cast<int32_t>(SampleRow(row, draws[r], scratch));
  }
  Upload(tokens.data(), ids);
}

}  // namespace deltaserve::kernels
