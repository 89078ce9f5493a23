// The chunkwise-parallel delta rule (spec §2.4): chunks of 64 tokens in the WY/UT form, with the
// intra-chunk decay products built from 16-row sub-blocks so that no exponent is ever positive,
// however strong the decay.
#pragma once

#include "kernels/backend.h"
#include "kernels/cpu/kda_prepare.h"

namespace deltaserve::kernels::cpu {

inline constexpr int64_t kKdaChunk = 64;
inline constexpr int64_t kKdaSubBlock = 16;

// Runs head `h` of one sequence; state is that head's [d, d] block, updated in place.
void KdaChunkHead(const KdaPreparer& prep, SequenceRows rows, int64_t h, float* state,
                  TensorView out);

}  // namespace deltaserve::kernels::cpu
