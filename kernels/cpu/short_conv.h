// KDA's short depthwise causal convolution followed by SiLU, with a per-sequence tail of the
// last (kernel - 1) inputs so prefill, continuation and decode all see the same history.
#pragma once

#include <span>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace deltaserve::kernels::cpu {

void CausalConvSilu(ThreadPool& pool, TensorView x, TensorView weight,
                    std::span<const ConvSequence> seqs, TensorView out);

}  // namespace deltaserve::kernels::cpu
