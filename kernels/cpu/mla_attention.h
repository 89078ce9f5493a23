// MLA attention over a latent cache (spec §3): the expanded form (per-head keys and values rebuilt
// from the cache with kv_b) and the absorbed form (queries moved into the latent space). Both
// compute the same function; tests hold them to each other.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace deltaserve::kernels::cpu {

// fp32 [rows, cols] scratch from the backend, counted against its memory limit; empty where it did
// not fit, and MlaAttention then returns without attending (the failure is the backend's).
using F32Scratch = std::function<Tensor(int64_t rows, int64_t cols)>;

// The expanded form's buffers that grow with a history (the history gathered, and its per-head
// keys and values) come from `scratch`; the per-thread score blocks (at most 64 query rows by the
// keys) do not.
void MlaAttention(ThreadPool& pool, const MlaParams& params, TensorView q, TensorView latent,
                  TensorView kv_b, std::span<const MlaSequence> seqs, TensorView out,
                  const F32Scratch& scratch);

}  // namespace deltaserve::kernels::cpu
