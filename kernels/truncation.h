// Top-k and top-p truncation over one sequence's logits or weights, without a full sort:
// O(V) expected, O(V log V) worst case, for V = 163840.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace deltaserve::kernels {

// Keeps the `k` largest logits and sets the rest to -inf; at the boundary, equal logits are
// kept in ascending token id order. k <= 0 or k >= logits.size() keeps everything.
// Precondition: no NaN. `scratch` is reused storage.
void ApplyTopK(int32_t k, std::span<float> logits, std::vector<float>& scratch);

// Zeroes every weight outside the nucleus: the fewest highest-weight tokens whose mass reaches
// top_p * total (ties at the boundary kept in ascending token id order; masses summed in
// double). The largest weight is always kept. Preconditions: weights >= 0 and finite,
// total = their sum > 0, top_p in (0, 1]. `scratch` is reused storage.
void ApplyTopP(double top_p, double total, std::span<float> weights, std::vector<float>& scratch);

// The weight w* at the nucleus boundary: the positive `values` greater than w* weigh less than
// `target` and those >= w* reach it. Mass-weighted quickselect; after `max_rounds` partitions it
// sorts what is left, bounding the worst case. Permutes `values`. Exposed for tests;
// ApplyTopP passes NucleusRoundBudget(values.size()).
float NucleusBoundary(std::vector<float>& values, double target, int max_rounds);
int NucleusRoundBudget(size_t num_values);

}  // namespace deltaserve::kernels
