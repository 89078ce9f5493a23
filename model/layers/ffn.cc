#include "model/layers/ffn.h"

#include <array>
#include <span>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deltaserve::model {

using kernels::DType;
using kernels::Tensor;
using kernels::TensorView;

void DenseFfnForward(kernels::Backend& backend, const DenseFfnWeights& w, TensorView x,
                     TensorView out) {
  const int64_t inner = w.gate.rows;
  Tensor gate = backend.Allocate(x.rows, inner, DType::kF32);
  Tensor up = backend.Allocate(x.rows, inner, DType::kF32);
  const std::array<kernels::MatMulProduct, 2> from_x = {{{x, w.gate, gate.view()}, {x, w.up, up.view()}}};
  backend.MatMuls(from_x);
  backend.SwiGlu(gate.view(), up.view(), gate.view());
  backend.MatMul(gate.view(), w.down, out);
}

absl::Status MoeFfnForward(const Step& step, int64_t layer, const MoeWeights& w,
                           ExpertRunner& experts, TensorView x, TensorView out) {
  kernels::Backend& backend = step.backend;
  const KimiLinearConfig& c = step.config;
  const int64_t t = x.rows;
  const int64_t k = c.num_experts_per_token;

  // The router and the shared expert's gate and up products all read x: issued together.
  Tensor logits = backend.Allocate(t, c.num_experts, DType::kF32);
  Tensor shared_gate, shared_up;
  std::array<kernels::MatMulProduct, 3> from_x = {{{x, w.router, logits.view()}}};
  size_t products = 1;
  if (w.has_shared) {
    shared_gate = backend.Allocate(t, w.shared.gate.rows, DType::kF32);
    shared_up = backend.Allocate(t, w.shared.up.rows, DType::kF32);
    from_x[products++] = {x, w.shared.gate, shared_gate.view()};
    from_x[products++] = {x, w.shared.up, shared_up.view()};
  }
  backend.MatMuls(std::span<const kernels::MatMulProduct>(from_x.data(), products));
  Tensor expert_ids = backend.Allocate(t, k, DType::kI32);
  Tensor weights = backend.Allocate(t, k, DType::kF32);
  const kernels::MoeRouting routing{k,
                                    c.num_expert_group,
                                    c.topk_group,
                                    c.moe_renormalize,
                                    static_cast<float>(c.routed_scaling_factor),
                                    step.options.biased_routing};
  backend.MoeRoute(logits.view(), w.correction_bias, routing, expert_ids.view(), weights.view());

  Tensor slot_out = backend.Allocate(t * k, c.hidden_size, DType::kF32);
  DS_RETURN_IF_ERROR(experts.RunExperts(layer, x, expert_ids.view(), slot_out.view()));
  // out = shared expert (or zero), then the routed experts' weighted sum added to it.
  if (w.has_shared) {
    backend.SwiGlu(shared_gate.view(), shared_up.view(), shared_gate.view());
    backend.MatMul(shared_gate.view(), w.shared.down, out);
  } else {
    backend.Zero(out);
  }
  backend.MoeCombine(slot_out.view(), weights.view(), out);
  return absl::OkStatus();
}

absl::Status LocalExpertRunner::RunExperts(int64_t layer, TensorView x, TensorView expert_ids,
                                           TensorView slot_out) {
  const MoeWeights& moe = weights_.layer(layer).moe;
  if (moe.first_expert != 0 || static_cast<int64_t>(moe.experts.size()) != moe.router.rows) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer, ": this process holds experts [", moe.first_expert, ", ",
        moe.first_expert + static_cast<int64_t>(moe.experts.size()), ") of ", moe.router.rows,
        "; running them all locally needs every expert"));
  }
  backend_.MoeExperts(x, expert_ids, moe.experts, moe.first_expert, slot_out);
  return absl::OkStatus();
}

}  // namespace deltaserve::model
