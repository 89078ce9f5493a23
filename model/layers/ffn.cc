#include "model/layers/ffn.h"

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
  backend.MatMul(x, w.gate, gate.view());
  backend.MatMul(x, w.up, up.view());
  backend.SwiGlu(gate.view(), up.view(), gate.view());
  backend.MatMul(gate.view(), w.down, out);
}

absl::Status MoeFfnForward(const Step& step, int64_t layer, const MoeWeights& w,
                           ExpertRunner& experts, TensorView x, TensorView out) {
  kernels::Backend& backend = step.backend;
  const KimiLinearConfig& c = step.config;
  const int64_t t = x.rows;
  const int64_t k = c.num_experts_per_token;

  Tensor logits = backend.Allocate(t, c.num_experts, DType::kF32);
  backend.MatMul(x, w.router, logits.view());
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
  backend.Zero(out);
  backend.MoeCombine(slot_out.view(), weights.view(), out);
  if (w.has_shared) {
    Tensor shared = backend.Allocate(t, c.hidden_size, DType::kF32);
    DenseFfnForward(backend, w.shared, x, shared.view());
    backend.Add(out, shared.view());
  }
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
