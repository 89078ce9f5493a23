// One draw from a row of logits by the rules every sampling path shares (kernels::RowSampling):
// the host sampler and Backend::SampleRows' definition use it; the CUDA sampling kernel follows
// the same rules.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/ops.h"

namespace deltaserve::kernels {

// The token drawn from `logits` (overwritten: scratch) with `draw`; -1 for a row a sampler
// rejects (GreedyArgmax's rule: a NaN or +inf, or nothing but -inf). `scratch` is reused storage.
int64_t SampleRow(std::span<float> logits, const RowSampling& draw, std::vector<float>& scratch);
// A logit after its penalties: divided by the repetition penalty where positive, multiplied where
// not, then less frequency · count + presence · (count > 0), each operation rounded on its own.
float PenalizedLogit(float logit, const LogitPenalty& penalty);
// SampleRow for a row whose GreedyArgmax, `best` (>= 0), the caller has taken already.
int64_t SampleRowFrom(std::span<float> logits, int64_t best, const RowSampling& draw,
                      std::vector<float>& scratch);

}  // namespace deltaserve::kernels
