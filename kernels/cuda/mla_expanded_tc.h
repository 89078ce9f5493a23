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

// The keys one call of the expanded attention kernels attends, for a history longer than the
// backend expands at once (CudaBackendOptions::mla_expanded_window_keys): positions [begin, end)
// of the call's sequences, whose key tiles then hold only those (tile 0 starts at `begin`), and
// each row's log-sum-exp beside its output so that windows combine. The default: every key.
struct MlaKeyWindow {
  int64_t begin = 0;     // a multiple of kMlaExpandedTileKeys
  int64_t end = 0;       // a multiple of kMlaExpandedTileKeys, or the sequence's length; 0: its length
  float* lse = nullptr;  // [q.rows, heads]: log2 of each row's softmax sum (scores · scale · log2 e)
  // out and lse hold the result of earlier windows, which must include key 0 (so that every row
  // has a sum): each row's output becomes the softmax-weighted mean of both. Rows with no key in
  // this window keep theirs.
  bool merge = false;
};
inline bool MlaKeyWindowValid(const MlaKeyWindow& w) {
  return w.begin >= 0 && w.begin % kMlaExpandedTileKeys == 0 && (w.end == 0 || w.end > w.begin) &&
         (!w.merge || w.lse != nullptr);
}

// The warpgroup kernel's other source of one expanded sequence's keys and values, in place of its
// key tiles: tensor maps of the sequence's kv rows ([length, heads * (nope + v)] bf16, as the
// product with kv_b writes them) and of its latent rows' rope part (bf16), whose boxes of 64 rows
// × 64 columns land in shared memory as the key tiles' blocks would. No key tiles to write.
inline constexpr size_t kMlaExpandedTileMapBytes = 2 * 128;
struct alignas(128) MlaExpandedTileMaps {  // the encoder writes only to 64-byte-aligned maps
  unsigned char bytes[kMlaExpandedTileMapBytes];
};
// False where they cannot be made (the driver's encoder missing, shapes other than Kimi's,
// unaligned rows): take key tiles then. kv: [length, heads * 256] bf16; rope: [length, 64] bf16
// (a view of the gathered latent rows).
bool EncodeMlaExpandedTileMaps(const MlaParams& params, TensorView kv, TensorView rope, MlaExpandedTileMaps& maps);

// Where a call splits each block's keys over `count` blocks (the grid's z), for more blocks than
// a few row tiles give: block z attends its share of the window's key tiles and writes its rows'
// outputs, normalised by its own sum, and their log-sum-exps to its slice of `out` and `lse`
// (rows (z · num_tiles + tile) · tile rows + r: [count · num_tiles · tile rows, heads · v] and
// [the same rows, heads]), which LaunchMlaExpandedMergeSplits then combines into the call's out
// (and window). count 1: no split, no buffers.
struct MlaKeySplits {
  int count = 1;
  float* out = nullptr;
  float* lse = nullptr;
};

// How many blocks a call splits each block's keys over (MlaKeySplits::count): as many as fit in one
// wave beside the others (the attention kernels hold a multiprocessor per block) where `blocks`
// (row tiles × heads) leave multiprocessors idle, at most 16, and at least 16 key tiles each of
// the `most_keys` a block has at most; 1 otherwise.
int MlaKeySplitCount(int64_t blocks, int64_t most_keys, int64_t multiprocessors);

// One call of the expanded attention kernels (device arrays; descriptors of the step's sequences).
struct MlaExpandedCall {
  const MlaSequence* seqs = nullptr;
  const void* const* key_tiles = nullptr;  // per sequence, as LaunchMlaExpandedKeysValues writes them
  // Per sequence, the warpgroup kernel's alternative to key tiles (a sequence whose key_tiles entry
  // is null takes its maps); null: key tiles only.
  const MlaExpandedTileMaps* tile_maps = nullptr;
  const MlaRowTile* tiles = nullptr;
  int64_t num_tiles = 0;
  MlaKeyWindow window;
  MlaKeySplits splits;
};

// What both expanded attention kernels (mla_expanded_tc.cu, mla_expanded_wgmma.cu) take.
struct MlaExpandedArgs {
  TensorView q, out;
  float scale_log2;  // softmax scale · log2(e)
  MlaExpandedCall call;
};

inline MlaExpandedArgs MakeMlaExpandedArgs(const MlaParams& params, TensorView q, const MlaExpandedCall& call,
                                           TensorView out) {
  return {q, out, params.scale * 1.4426950408889634f, call};
}

// nope 128, rope 64, v 128 (the Kimi shapes), a positive softmax scale.
bool MlaExpandedTcShapes(const MlaParams& params);
// MlaExpandedTcShapes, F32 q and out, their rows 16- and 8-byte aligned.
bool MlaExpandedTcSupports(const MlaParams& params, TensorView q, TensorView out);

// The key tiles of positions [first, first + length) of one expanded sequence (layout above;
// heads × MlaExpandedKeyTiles(length) × kMlaExpandedTileBytes bytes at `key_tiles`, 16-byte
// aligned, tile 0 starting at position `first`): the keys are the expanded nope columns of kv ‖
// the cache's rope part, the values kv's v columns. kv: [length, heads * (nope + v)] F32 or BF16
// (those positions' latent times kv_b); seq: the sequence's device descriptor (its cache).
int LaunchMlaExpandedKeysValues(const MlaParams& params, TensorView kv, const MlaSequence* seq, int64_t first,
                                int64_t length, void* key_tiles, Stream stream);

// The launchers' checks of a call: the shapes (MlaExpandedTcSupports), its arrays, window and
// splits.
bool MlaExpandedCallValid(const MlaParams& params, TensorView q, const MlaExpandedCall& call, TensorView out);

// Attention of every call tile's rows and head over their sequence's keys 0 .. position (causal)
// in the call's window, key_tiles[s] as LaunchMlaExpandedKeysValues writes them for sequence s and
// the window (null for the others); bf16 Q, K, V and probabilities, fp32 accumulation and output.
// A tile whose rows all precede the window is left alone. This kernel reads key tiles only
// (call.tile_maps null).
int LaunchMlaExpandedTc(const MlaParams& params, TensorView q, const MlaExpandedCall& call, TensorView out,
                        Stream stream);

// The same attention on Hopper's warpgroup products (mla_expanded_wgmma.cu) where it runs: built
// for sm_90a and the current device of compute capability 9.0. Its tiles are
// kMlaExpandedWgmmaRows rows; otherwise the same arguments, and results up to the order of fp32
// additions; call.tile_maps (or null): the sequences whose key_tiles entry is null are read
// through their maps.
inline constexpr int64_t kMlaExpandedWgmmaRows = 128;
bool MlaExpandedWgmmaRuns();
int LaunchMlaExpandedWgmma(const MlaParams& params, TensorView q, const MlaExpandedCall& call, TensorView out,
                           Stream stream);

// After a call whose keys were split (call.splits.count > 1, its tiles `tile_rows` rows): each
// tile row's output, the splits' outputs weighted by their log-sum-exps, into out (combined with
// what out and the window's lse hold where the window merges; the window's lse updated).
int LaunchMlaExpandedMergeSplits(const MlaParams& params, const MlaExpandedCall& call, int64_t tile_rows,
                                 TensorView out, Stream stream);

}  // namespace deltaserve::kernels::cuda
