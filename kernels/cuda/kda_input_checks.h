// The checks the KDA launchers (fused recurrent, chunked, decode step) make of their inputs: fp32
// activations (or bf16 where the launcher takes them: q, k, v, the gate logits and the output in
// one dtype), float parameters, and shapes that agree with num_heads x head_dim and the
// rows.
#pragma once

#include "kernels/ops.h"

namespace deltaserve::kernels::cuda {

inline bool KdaInputsMatch(const KdaInputs& in, const TensorView& out, bool bf16_activations = false) {
  const int64_t heads = in.num_heads, width = heads * in.head_dim, t = in.q.rows;
  const DType act = in.q.dtype;
  const auto is = [](const TensorView& v, DType dtype) { return v.dtype == dtype; };
  const bool act_ok = act == DType::kF32 || (bf16_activations && act == DType::kBF16);
  if (!act_ok || !is(in.k, act) || !is(in.v, act) || !is(in.gate_logits, act) || !is(in.beta_logits, DType::kF32) ||
      !is(out, act) || in.a_log.dtype == DType::kI32 || in.dt_bias.dtype == DType::kI32) {
    return false;
  }
  return in.q.cols == width && in.k.cols == width && in.v.cols == width &&
         in.gate_logits.cols == width && in.beta_logits.cols == heads && out.cols == width &&
         in.k.rows == t && in.v.rows == t && in.gate_logits.rows == t && in.beta_logits.rows == t &&
         out.rows == t && in.a_log.numel() == heads && in.dt_bias.numel() == width;
}

}  // namespace deltaserve::kernels::cuda
