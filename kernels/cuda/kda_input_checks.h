// The checks both KDA launchers (fused recurrent, chunked) make of their inputs: fp32
// activations, float parameters, and shapes that agree with num_heads x head_dim and the rows.
#pragma once

#include "kernels/ops.h"

namespace deltaserve::kernels::cuda {

inline bool KdaInputsMatch(const KdaInputs& in, const TensorView& out) {
  const int64_t heads = in.num_heads, width = heads * in.head_dim, t = in.q.rows;
  const auto f32 = [](const TensorView& v) { return v.dtype == DType::kF32; };
  if (!f32(in.q) || !f32(in.k) || !f32(in.v) || !f32(in.gate_logits) || !f32(in.beta_logits) ||
      !f32(out) || in.a_log.dtype == DType::kI32 || in.dt_bias.dtype == DType::kI32) {
    return false;
  }
  return in.q.cols == width && in.k.cols == width && in.v.cols == width &&
         in.gate_logits.cols == width && in.beta_logits.cols == heads && out.cols == width &&
         in.k.rows == t && in.v.rows == t && in.gate_logits.rows == t && in.beta_logits.rows == t &&
         out.rows == t && in.a_log.numel() == heads && in.dt_bias.numel() == width;
}

}  // namespace deltaserve::kernels::cuda
