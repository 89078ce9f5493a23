// The tensor-core form of expanded MLA attention (mla_expanded_tc.cu): the prefill form at serving
// precision, used by CudaBackend::MlaAttention where the shapes allow.
#pragma once

#include <cstdint>

#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {

// Query rows per block: each block attends one head for rows [row, row + kMlaExpandedTcRows) of
// one expanded sequence's new rows.
inline constexpr int64_t kMlaExpandedTcRows = 64;

struct MlaRowTile {
  int32_t seq;  // index into the call's sequences
  int32_t row;  // first of the tile's rows, counted from the sequence's first new row
};

// What both expanded attention kernels (mla_expanded_tc.cu, mla_expanded_wgmma.cu) take.
struct MlaExpandedArgs {
  TensorView q, out;
  const MlaSequence* seqs;
  const void* const* keys_all;
  const void* const* values_all;
  const MlaRowTile* tiles;
  float scale_log2;  // softmax scale · log2(e)
};

inline MlaExpandedArgs MakeMlaExpandedArgs(const MlaParams& params, TensorView q, const MlaSequence* seqs,
                                           const void* const* keys_all, const void* const* values_all,
                                           const MlaRowTile* tiles, TensorView out) {
  return {q, out, seqs, keys_all, values_all, tiles, params.scale * 1.4426950408889634f};
}

// nope 128, rope 64, v 128 (the Kimi shapes); q and out rows 16- and 8-byte aligned.
bool MlaExpandedTcSupports(const MlaParams& params, TensorView q, TensorView out);

// The keys and values of one expanded sequence's `length` positions as the attention reads them,
// bf16, head-major: keys [heads, length, nope + rope] (the expanded nope columns of kv ‖ the
// cache's rope part), values [heads, length, v]. kv: [length, heads * (nope + v)] fp32 (the
// latent history times kv_b); seq: the sequence's device descriptor (its cache).
int LaunchMlaExpandedKeysValues(const MlaParams& params, TensorView kv, const MlaSequence* seq, int64_t length,
                                void* keys, void* values, Stream stream);

// Attention of every tile's rows and head over their sequence's keys 0 .. position (causal),
// keys_all[s] and values_all[s] as LaunchMlaExpandedKeysValues writes them for sequence s (null
// for the others); bf16 Q, K, V and probabilities, fp32 accumulation and output.
int LaunchMlaExpandedTc(const MlaParams& params, TensorView q, const MlaSequence* seqs,
                        const void* const* keys_all, const void* const* values_all, const MlaRowTile* tiles,
                        int64_t num_tiles, TensorView out, Stream stream);

// The same attention on Hopper's warpgroup products (mla_expanded_wgmma.cu) where it runs: built
// for sm_90a and the current device of compute capability 9.0. Its tiles are
// kMlaExpandedWgmmaRows rows; otherwise the same arguments, and results up to the order of fp32
// additions.
inline constexpr int64_t kMlaExpandedWgmmaRows = 128;
bool MlaExpandedWgmmaRuns();
int LaunchMlaExpandedWgmma(const MlaParams& params, TensorView q, const MlaSequence* seqs,
                           const void* const* keys_all, const void* const* values_all, const MlaRowTile* tiles,
                           int64_t num_tiles, TensorView out, Stream stream);

}  // namespace deltaserve::kernels::cuda
