// Mixture-of-experts on the CPU (spec §4.2): sigmoid + correction-bias routing with optional
// grouped top-k, per-expert SwiGLU over the tokens routed to it, and the weighted combine.
#pragma once

#include <span>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace deltaserve::kernels::cpu {

void MoeRoute(ThreadPool& pool, TensorView router_logits, TensorView correction_bias,
              const MoeRouting& routing, TensorView expert_ids, TensorView weights);
void MoeExperts(ThreadPool& pool, TensorView x, TensorView expert_ids,
                std::span<const ExpertWeights> experts, int64_t first_expert, TensorView slot_out);
void MoeCombine(ThreadPool& pool, TensorView slot_out, TensorView weights, TensorView out);

}  // namespace deltaserve::kernels::cpu
