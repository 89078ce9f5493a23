#include "model/layers/ffn.h"

#include <array>

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
  {
    const kernels::ProductInput shared_x = backend.PrepareProductInput(x, w.gate);
    const std::array<kernels::MatMulProduct, 2> from_x = {{{shared_x.For(w.gate), w.gate, gate.view()},
                                                           {shared_x.For(w.up), w.up, up.view()}}};
    backend.MatMuls(from_x);
  }
  backend.SwiGlu(gate.view(), up.view(), gate.view());
  backend.MatMul(gate.view(), w.down, out);
}

namespace {

absl::Status CheckHoldsEveryExpert(int64_t layer, const MoeWeights& moe) {
  if (moe.first_expert != 0 || static_cast<int64_t>(moe.experts.size()) != moe.router.rows) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer, ": this process holds experts [", moe.first_expert, ", ",
        moe.first_expert + static_cast<int64_t>(moe.experts.size()), ") of ", moe.router.rows,
        "; running them all locally needs every expert"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status MoeFfnForward(const Step& step, int64_t layer, const MoeWeights& w,
                           ExpertRunner& experts, TensorView x, TensorView out) {
  const KimiLinearConfig& c = step.config;
  const kernels::MoeRouting routing{c.num_experts_per_token,
                                    c.num_expert_group,
                                    c.topk_group,
                                    c.moe_renormalize,
                                    static_cast<float>(c.routed_scaling_factor),
                                    step.options.biased_routing};
  const kernels::ExpertWeights shared_weights{w.shared.gate, w.shared.up, w.shared.down};
  const kernels::ExpertWeights* shared = w.has_shared ? &shared_weights : nullptr;
  // Every expert here: the backend's whole MoE FFN (fused on the GPU at decode sizes).
  if (experts.local()) {
    DS_RETURN_IF_ERROR(CheckHoldsEveryExpert(layer, w));
    step.backend.MoeFfn(x, w.router, w.correction_bias, routing, w.experts, shared, out);
    return absl::OkStatus();
  }
  absl::Status status;
  kernels::ComposeMoeFfn(step.backend, x, w.router, w.correction_bias, routing, shared, out,
                         [&](TensorView ids, TensorView slot_out) {
                           status = experts.RunExperts(layer, x, ids, slot_out);
                           return status.ok();
                         });
  return status;
}

absl::Status LocalExpertRunner::RunExperts(int64_t layer, TensorView x, TensorView expert_ids,
                                           TensorView slot_out) {
  const MoeWeights& moe = weights_.layer(layer).moe;
  DS_RETURN_IF_ERROR(CheckHoldsEveryExpert(layer, moe));
  backend_.MoeExperts(x, expert_ids, moe.experts, moe.first_expert, slot_out);
  return absl::OkStatus();
}

}  // namespace deltaserve::model
