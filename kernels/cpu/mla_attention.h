// MLA attention over a latent cache (spec §3): the expanded form (per-head keys and values rebuilt
// from the cache with kv_b) and the absorbed form (queries moved into the latent space). Both
// compute the same function; tests hold them to each other.
#pragma once

#include <span>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace deltaserve::kernels::cpu {

void MlaAttention(ThreadPool& pool, const MlaParams& params, TensorView q, TensorView latent,
                  TensorView kv_b, std::span<const MlaSequence> seqs, TensorView out);

}  // namespace deltaserve::kernels::cpu
