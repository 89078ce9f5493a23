// Top-k and top-p truncation (see truncation.h): selection on contiguous float copies, since
// index-based sorts over 163840 ids are dominated by cache misses and mispredictions.
#include "kernels/truncation.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <functional>
#include <limits>
#include <numeric>

namespace deltaserve::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Below this many, the largest values are found with a bounded min-heap in one pass (most
// elements cost one comparison with its top); above it nth_element is cheaper.
constexpr int64_t kHeapSelectLimit = 4096;

// Leaves the `count` largest entries of `x` (with multiplicity, in no order) in
// values[0, count) and returns the smallest of them. Precondition: 0 < count <= x.size().
float SelectLargest(std::span<const float> x, int64_t count, std::vector<float>& values) {
  if (count <= kHeapSelectLimit) {
    values.assign(x.begin(), x.begin() + count);
    std::make_heap(values.begin(), values.end(), std::greater<float>());
    for (size_t i = count; i < x.size(); ++i) {
      if (x[i] <= values.front()) continue;
      std::pop_heap(values.begin(), values.end(), std::greater<float>());
      values.back() = x[i];
      std::push_heap(values.begin(), values.end(), std::greater<float>());
    }
    return values.front();
  }
  values.assign(x.begin(), x.end());
  std::nth_element(values.begin(), values.begin() + (count - 1), values.end(),
                   std::greater<float>());
  return values[count - 1];
}

}  // namespace

void ApplyTopK(int32_t k, std::span<float> logits, std::vector<float>& scratch) {
  if (k <= 0 || static_cast<size_t>(k) >= logits.size()) return;
  const float kth = SelectLargest(logits, k, scratch);
  if (kth == kNegInf) return;  // at most k unmasked tokens: nothing to drop
  int64_t ties_left =
      k - std::count_if(scratch.begin(), scratch.begin() + k, [&](float x) { return x > kth; });
  for (float& x : logits) {
    if (x > kth) continue;
    if (x == kth && ties_left > 0) {
      --ties_left;
      continue;
    }
    x = kNegInf;
  }
}

int NucleusRoundBudget(size_t num_values) {
  // A good pivot halves the range, so this many rounds is only exceeded by unlucky pivots.
  return 2 * static_cast<int>(std::bit_width(num_values)) + 8;
}

float NucleusBoundary(std::vector<float>& values, double target, int max_rounds) {
  auto lo = values.begin();
  auto hi = values.end();
  double need = target;  // stays > 0: only reduced by masses smaller than itself
  for (int rounds_left = max_rounds; lo != hi; --rounds_left) {
    if (rounds_left == 0) {
      std::sort(lo, hi, std::greater<float>());
      for (auto it = lo; it != hi; ++it) {
        need -= *it;
        if (need <= 0.0) return *it;
      }
      break;
    }
    const float a = *lo, b = *(lo + (hi - lo) / 2), c = *(hi - 1);
    const float pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // median of 3
    const auto gt_end = std::partition(lo, hi, [&](float x) { return x > pivot; });
    const auto eq_end = std::partition(gt_end, hi, [&](float x) { return x == pivot; });
    const double mass_gt = std::accumulate(lo, gt_end, 0.0);
    if (mass_gt >= need) {
      hi = gt_end;  // non-empty, as need > 0; strictly smaller, as the pivot is not in it
      continue;
    }
    const double mass_ge = mass_gt + std::accumulate(gt_end, eq_end, 0.0);
    if (mass_ge >= need) return pivot;
    need -= mass_ge;
    lo = eq_end;
  }
  // Rounding left the target just out of reach: keep every token (values is non-empty, as
  // target > 0 was never reached otherwise).
  return *std::min_element(values.begin(), values.end());
}

void ApplyTopP(double top_p, double total, std::span<float> weights, std::vector<float>& scratch) {
  const double target = top_p * total;
  float boundary = -1.0f;
  // Fast path: language-model nuclei are usually a few dozen tokens, so try the top ones first.
  constexpr int64_t kFirstTry = 64;
  if (static_cast<int64_t>(weights.size()) > kFirstTry) {
    SelectLargest(weights, kFirstTry, scratch);
    std::sort(scratch.begin(), scratch.end(), std::greater<float>());
    double mass = 0.0;
    for (const float w : scratch) {
      mass += w;
      if (mass >= target) {
        boundary = w;
        break;
      }
    }
  }
  if (boundary < 0.0f) {
    scratch.clear();
    for (const float w : weights) {
      if (w > 0.0f) scratch.push_back(w);
    }
    boundary = NucleusBoundary(scratch, target, NucleusRoundBudget(scratch.size()));
  }
  double mass = 0.0;
  for (const float w : weights) {
    if (w > boundary) mass += w;
  }
  for (float& w : weights) {
    if (w > boundary) continue;
    if (w == boundary && mass < target) {
      mass += w;
      continue;
    }
    w = 0.0f;
  }
}

}  // namespace deltaserve::kernels
