// The tensor-core form of absorbed MLA decode (mla_absorbed_tc.cu), used by
// LaunchMlaAbsorbedAttention at serving precision; mla_attention.cu merges its partitions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {

// Up to 32 heads, kv_lora_rank 512, rope 64, nope <= 256 (the Kimi shapes).
bool MlaAbsorbedTcSupports(const MlaParams& params);
// Key partitions per absorbed row for `rows` rows whose longest history plus new rows is max_keys.
int64_t MlaAbsorbedTcPartitions(int64_t rows, int64_t max_keys);
size_t MlaAbsorbedTcScratchBytes(const MlaParams& params, int64_t rows, int64_t max_keys);
// Queues q absorption and the attention; on success *partial holds [rows, heads, *partitions,
// kv_lora_rank + 2] states (m, l, unnormalised Σ p c_n) for the merge, inside `scratch`.
int LaunchMlaAbsorbedTc(const MlaParams& params, TensorView q, TensorView kv_b, const MlaSequence* seqs,
                        int64_t num_seqs, int64_t max_keys, void* scratch, float** partial,
                        int64_t* partitions, Stream stream);

}  // namespace deltaserve::kernels::cuda
