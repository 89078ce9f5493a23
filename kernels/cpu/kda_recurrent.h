// The delta rule token by token (spec §2.3): the naive reference, and the CPU decode path.
#pragma once

#include "kernels/backend.h"
#include "kernels/cpu/kda_prepare.h"

namespace deltaserve::kernels::cpu {

// Runs head `h` of one sequence; state is that head's [d, d] block, updated in place.
void KdaRecurrentHead(const KdaPreparer& prep, SequenceRows rows, int64_t h, float* state,
                      TensorView out);

}  // namespace deltaserve::kernels::cpu
