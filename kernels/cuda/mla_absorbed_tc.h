// The tensor-core form of absorbed MLA decode (mla_absorbed_tc.cu, on Hopper's warpgroup products:
// MlaAbsorbedTcRuns), used by LaunchMlaAbsorbedAttention at serving precision; mla_attention.cu
// merges its segments.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {

// Up to 32 heads, kv_lora_rank 512, rope 64, nope <= 256 (the Kimi shapes).
bool MlaAbsorbedTcSupports(const MlaParams& params);
size_t MlaAbsorbedTcScratchBytes(const MlaParams& params, int64_t rows, int64_t max_keys);
// Queues q absorption and the attention over the key split `key_split` (the uploaded
// BuildMlaKeySplit table; every absorbed sequence's latent pages BF16); on success *partial holds
// [rows + *blocks, heads, kv_lora_rank + 2] segment states (m, l, unnormalised Σ p c_n), slots as
// the table's MlaRowSlots say, for the merge, inside `scratch`. Where `append` has data (the
// rows' new latents, as LaunchMlaAppendLatent takes them), the absorption appends them first.
int LaunchMlaAbsorbedTc(const MlaParams& params, TensorView q, TensorView kv_b, const MlaSequence* seqs,
                        int64_t num_seqs, const int32_t* key_split, int64_t max_keys, TensorView append,
                        void* scratch, float** partial, int64_t* blocks, Stream stream);

}  // namespace deltaserve::kernels::cuda
