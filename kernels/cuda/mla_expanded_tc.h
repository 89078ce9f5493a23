// The tensor-core form of expanded MLA attention (mla_expanded_tc.cu): the prefill form at serving
// precision, used by CudaBackend::MlaAttention where the shapes allow.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {

// Query rows per block: each block attends one head for rows [row, row + kMlaExpandedTcRows) of
// one expanded sequence's new rows.
inline constexpr int64_t kMlaExpandedTcRows = 64;

struct MlaRowTile {
  int32_t seq;  // index into the call's sequences
  int32_t row;  // first of the tile's rows, counted from the sequence's first new row
};

// The keys and values of one expanded sequence as both attention kernels read them: per head, its
// positions in tiles of kMlaExpandedTileKeys, each kMlaExpandedTileBytes long: the keys' three
// 64-column blocks (nope ‖ rope, 192 bf16), then the values' two (128 bf16); each block 64 rows
// of 128 bytes, row r's 16-byte chunk c stored at chunk c ^ (r mod 8) (the 128-byte swizzle of the
// wgmma kernel's shared stages, so that one bulk copy moves a whole tile there). Rows past the
// sequence's length are zeros.
inline constexpr int64_t kMlaExpandedTileKeys = 64;
inline constexpr int64_t kMlaExpandedTileBytes = kMlaExpandedTileKeys * (128 + 64 + 128) * 2;
inline constexpr int64_t MlaExpandedKeyTiles(int64_t length) {
  return (length + kMlaExpandedTileKeys - 1) / kMlaExpandedTileKeys;
}

// The row tiles of the expanded sequences among seqs[0 .. count) (host descriptors; absorbed ones
// have none), `tile_rows` rows each, those with the most keys first: the blocks a grid runs last
// are then its shortest, which leaves less of the GPU idle at the end (a sequence's last tile has
// twice its tiles' average keys).
std::vector<MlaRowTile> MlaExpandedRowTiles(const MlaSequence* seqs, int64_t count, int64_t tile_rows);

// What both expanded attention kernels (mla_expanded_tc.cu, mla_expanded_wgmma.cu) take.
struct MlaExpandedArgs {
  TensorView q, out;
  const MlaSequence* seqs;
  const void* const* key_tiles;  // per sequence, as LaunchMlaExpandedKeysValues writes them
  const MlaRowTile* tiles;
  float scale_log2;  // softmax scale · log2(e)
};

inline MlaExpandedArgs MakeMlaExpandedArgs(const MlaParams& params, TensorView q, const MlaSequence* seqs,
                                           const void* const* key_tiles, const MlaRowTile* tiles, TensorView out) {
  return {q, out, seqs, key_tiles, tiles, params.scale * 1.4426950408889634f};
}

// nope 128, rope 64, v 128 (the Kimi shapes), a positive softmax scale; q and out rows 16- and
// 8-byte aligned.
bool MlaExpandedTcSupports(const MlaParams& params, TensorView q, TensorView out);

// The key tiles of one expanded sequence's `length` positions (layout above; heads ×
// MlaExpandedKeyTiles(length) × kMlaExpandedTileBytes bytes at `key_tiles`, 16-byte aligned): the
// keys are the expanded nope columns of kv ‖ the cache's rope part, the values kv's v columns.
// kv: [length, heads * (nope + v)] fp32 (the latent history times kv_b); seq: the sequence's
// device descriptor (its cache).
int LaunchMlaExpandedKeysValues(const MlaParams& params, TensorView kv, const MlaSequence* seq, int64_t length,
                                void* key_tiles, Stream stream);

// Attention of every tile's rows and head over their sequence's keys 0 .. position (causal),
// key_tiles[s] as LaunchMlaExpandedKeysValues writes them for sequence s (null for the others);
// bf16 Q, K, V and probabilities, fp32 accumulation and output.
int LaunchMlaExpandedTc(const MlaParams& params, TensorView q, const MlaSequence* seqs, const void* const* key_tiles,
                        const MlaRowTile* tiles, int64_t num_tiles, TensorView out, Stream stream);

// The same attention on Hopper's warpgroup products (mla_expanded_wgmma.cu) where it runs: built
// for sm_90a and the current device of compute capability 9.0. Its tiles are
// kMlaExpandedWgmmaRows rows; otherwise the same arguments, and results up to the order of fp32
// additions.
inline constexpr int64_t kMlaExpandedWgmmaRows = 128;
bool MlaExpandedWgmmaRuns();
int LaunchMlaExpandedWgmma(const MlaParams& params, TensorView q, const MlaSequence* seqs,
                           const void* const* key_tiles, const MlaRowTile* tiles, int64_t num_tiles, TensorView out,
                           Stream stream);

}  // namespace deltaserve::kernels::cuda
