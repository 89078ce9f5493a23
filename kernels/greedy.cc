#include "kernels/greedy.h"

#include <cmath>
#include <limits>

namespace deltaserve::kernels {

int64_t GreedyArgmax(std::span<const float> row) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  int64_t top = -1;
  for (size_t i = 0; i < row.size(); ++i) {
    const float v = row[i];
    if (std::isnan(v) || v == kInf) return -1;
    if (v != -kInf && (top < 0 || v > row[static_cast<size_t>(top)])) top = static_cast<int64_t>(i);
  }
  return top;
}

}  // namespace deltaserve::kernels
