// The fused KDA decode step's form for a few sequences (kda_decode_step_split.cu), which
// LaunchKdaDecodeStep picks where it applies.
#pragma once

#include <cstdint>

#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {

// Up to this many (sequence, head) tasks, two sequences of Kimi's 32 heads, the split form is the
// faster (H200, 2026-11-30: 3.7 against 5.1 µs at one sequence, 4.9 against 5.4 at two, but 8.3
// against 6.5 at four, where the persistent kernel has a task for every SM).
constexpr int64_t kKdaDecodeSplitMaxTasks = 64;

// Whether `tasks` (sequence, head) pairs of head dim `head_dim` take the split form: d = 128 and
// at most kKdaDecodeSplitMaxTasks tasks.
bool KdaDecodeStepSplitApplies(int64_t head_dim, int64_t tasks);
// Queues the step for inputs LaunchKdaDecodeStep has checked, where KdaDecodeStepSplitApplies.
int LaunchKdaDecodeStepSplit(const KdaDecodeInputs& in, const KdaDecodeSequence* seqs, int64_t tasks, TensorView out,
                             Stream stream);

}  // namespace deltaserve::kernels::cuda
