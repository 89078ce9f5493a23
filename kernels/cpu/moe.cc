#include "kernels/cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "base/check.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"

namespace deltaserve::kernels::cpu {
namespace {

// Indices of the `k` largest values, ties to the lower index.
std::vector<int64_t> TopK(const std::vector<float>& values, int64_t k) {
  std::vector<int64_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  order.resize(static_cast<size_t>(k));
  return order;
}

}  // namespace

void MoeRoute(ThreadPool& pool, TensorView router_logits, TensorView correction_bias,
              const MoeRouting& routing, TensorView expert_ids, TensorView weights) {
  const int64_t num_experts = router_logits.cols;
  const int64_t k = routing.top_k;
  DS_CHECK(expert_ids.dtype == DType::kI32 && expert_ids.cols == k && weights.cols == k);
  DS_CHECK(num_experts % routing.num_groups == 0 && k <= num_experts);
  std::vector<float> bias(static_cast<size_t>(num_experts), 0.0f);
  if (correction_bias.data != nullptr) {
    DS_CHECK(correction_bias.numel() == num_experts);
    LoadAllAsF32(correction_bias, bias.data());
  }
  const int64_t group_size = num_experts / routing.num_groups;

  pool.ParallelForBlocked(router_logits.rows, 8, [&](int64_t t) {
    const float* logits = router_logits.row<float>(t);
    std::vector<float> scores(num_experts), choice(num_experts);
    for (int64_t e = 0; e < num_experts; ++e) {
      scores[e] = Sigmoid(logits[e]);
      choice[e] = scores[e] + bias[e];
    }
    if (routing.num_groups > 1) {
      // A group scores the sum of its two best choices; experts outside the best groups are out.
      std::vector<float> group_scores(routing.num_groups);
      for (int64_t g = 0; g < routing.num_groups; ++g) {
        std::vector<float> members(choice.begin() + g * group_size,
                                   choice.begin() + (g + 1) * group_size);
        const std::vector<int64_t> best = TopK(members, std::min<int64_t>(2, group_size));
        group_scores[g] = 0.0f;
        for (int64_t i : best) group_scores[g] += members[i];
      }
      std::vector<bool> kept(routing.num_groups, false);
      for (int64_t g : TopK(group_scores, routing.top_groups)) kept[g] = true;
      for (int64_t e = 0; e < num_experts; ++e) {
        if (!kept[e / group_size]) choice[e] = -std::numeric_limits<float>::infinity();
      }
    }
    std::vector<int64_t> chosen = TopK(choice, k);
    std::sort(chosen.begin(), chosen.end());
    int32_t* ids = expert_ids.row<int32_t>(t);
    float* w = weights.row<float>(t);
    float sum = 0.0f;
    for (int64_t s = 0; s < k; ++s) {
      ids[s] = static_cast<int32_t>(chosen[s]);
      w[s] = routing.biased_weights ? choice[chosen[s]] : scores[chosen[s]];
      sum += w[s];
    }
    const float denominator = routing.renormalize ? sum + 1e-20f : 1.0f;
    for (int64_t s = 0; s < k; ++s) w[s] = w[s] / denominator * routing.scaling;
  });
}

void MoeExperts(ThreadPool& pool, TensorView x, TensorView expert_ids,
                std::span<const ExpertWeights> experts, int64_t first_expert, TensorView slot_out) {
  const int64_t k = expert_ids.cols;
  const int64_t num_local = static_cast<int64_t>(experts.size());
  DS_CHECK(slot_out.rows == x.rows * k && slot_out.cols == x.cols);
  // Slots (t*k + s) per local expert, in slot order.
  std::vector<std::vector<int64_t>> slots(static_cast<size_t>(num_local));
  for (int64_t t = 0; t < x.rows; ++t) {
    const int32_t* ids = expert_ids.row<int32_t>(t);
    for (int64_t s = 0; s < k; ++s) {
      const int64_t local = ids[s] - first_expert;
      if (local >= 0 && local < num_local) slots[local].push_back(t * k + s);
    }
  }
  std::vector<int64_t> active;
  for (int64_t e = 0; e < num_local; ++e) {
    if (!slots[e].empty()) active.push_back(e);
  }
  // One task per expert; the matrix products inside run on the task's thread.
  pool.ParallelFor(static_cast<int64_t>(active.size()), [&](int64_t task) {
    const int64_t e = active[task];
    const ExpertWeights& weights = experts[e];
    const int64_t m = static_cast<int64_t>(slots[e].size());
    const int64_t hidden = x.cols;
    const int64_t inner = weights.gate.rows;
    std::vector<float> input(m * hidden), gate(m * inner), up(m * inner), output(m * hidden);
    for (int64_t i = 0; i < m; ++i) {
      const float* src = x.row<float>(slots[e][i] / k);
      std::copy(src, src + hidden, input.begin() + i * hidden);
    }
    const TensorView in_view = MakeView(input.data(), DType::kF32, m, hidden);
    const TensorView gate_view = MakeView(gate.data(), DType::kF32, m, inner);
    const TensorView up_view = MakeView(up.data(), DType::kF32, m, inner);
    MatMul(pool, in_view, weights.gate, gate_view);
    MatMul(pool, in_view, weights.up, up_view);
    SwiGlu(pool, gate_view, up_view, gate_view);
    MatMul(pool, gate_view, weights.down, MakeView(output.data(), DType::kF32, m, hidden));
    for (int64_t i = 0; i < m; ++i) {
      std::copy(output.begin() + i * hidden, output.begin() + (i + 1) * hidden,
                slot_out.row<float>(slots[e][i]));
    }
  });
}

void MoeCombine(ThreadPool& pool, TensorView slot_out, TensorView weights, TensorView out) {
  const int64_t k = weights.cols;
  DS_CHECK(slot_out.rows == out.rows * k && slot_out.cols == out.cols && weights.rows == out.rows);
  pool.ParallelForBlocked(out.rows, 16, [&](int64_t t) {
    float* o = out.row<float>(t);
    const float* w = weights.row<float>(t);
    for (int64_t s = 0; s < k; ++s) {
      const float* expert_out = slot_out.row<float>(t * k + s);
      for (int64_t c = 0; c < out.cols; ++c) o[c] += w[s] * expert_out[c];
    }
  });
}

}  // namespace deltaserve::kernels::cpu
