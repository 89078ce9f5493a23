// The online softmax steps of the expanded MLA attention kernels
// (mla_expanded_tc.cu on mma.sync, mla_expanded_wgmma.cu on warpgroup products): both hold a
// lane's scores in the mma.sync accumulator layout, two query rows per lane. Also which key tiles
// a block attends (a window of the history, a split's share) and how it writes its rows.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/mla_expanded_tc.h"
#include "kernels/cuda/mma_tiles.cuh"

namespace deltaserve::kernels::cuda {

// How far a row's reference maximum may lag the largest score it has seen (log2 domain): the
// probabilities stay below 2^kMaxLag, and most tiles leave the reference where it was.
inline constexpr float kMaxLag = 8.0f;

// The scores of one tile of kKeys keys from key j0, with the causal mask (key <= pos[half] of the
// lane's row half), into probabilities in place: exp2(score · scale_log2 - m) against each row's
// reference maximum m (log2 domain), which moves only when the tile's scores pass it by more than
// kMaxLag. alpha is the factor for what was accumulated before: exactly 1 where m stayed, so
// callers skip rescaling then (most tiles); l gathers the rows' sums. Element i of 16-key group kt
// is s[8 kt + i] (AccRow, AccCol). kMasked false: a tile whose keys all precede every row's
// position, which needs no mask (most tiles of a long prefill).
template <int kKeys, bool kMasked = true>
__device__ __forceinline__ void OnlineSoftmaxTile(float (&s)[kKeys / 2], int64_t j0, const int64_t (&pos)[2],
                                                  float scale_log2, int lane, float (&m)[2], float (&l)[2],
                                                  float (&alpha)[2]) {
  float tile_max[2] = {-INFINITY, -INFINITY};  // of the raw scores (scale_log2 > 0 keeps the order)
#pragma unroll
  for (int kt = 0; kt < kKeys / 16; ++kt)
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int half = (i >> 1) & 1;
      float& x = s[8 * kt + i];
      if constexpr (kMasked) {
        const int64_t key = j0 + 16 * kt + AccCol(i, lane);
        if (key > pos[half]) x = -INFINITY;
      }
      tile_max[half] = fmaxf(tile_max[half], x);
    }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float mx = tile_max[half];
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mx *= scale_log2;
    alpha[half] = 1.0f;
    if (mx > m[half] + kMaxLag) {  // also where m is -inf and the tile has a key for the row
      alpha[half] = exp2f(m[half] - mx);
      m[half] = mx;
    }
  }
  float sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < kKeys / 2; ++i) {
    const int half = (i >> 1) & 1;
    // A masked score may meet an m still at -inf (a row none of whose keys came yet): 0, not NaN.
    const float e = kMasked && s[i] == -INFINITY ? 0.0f : exp2f(fmaf(s[i], scale_log2, -m[half]));
    s[i] = e;
    sum[half] += e;
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) l[half] = l[half] * alpha[half] + sum[half];
}

// OnlineSoftmaxTile for a causal tile of a block whose first query sits at position pos0: without
// the mask where every key of the tile precedes it.
template <int kKeys>
__device__ __forceinline__ void CausalSoftmaxTile(float (&s)[kKeys / 2], int64_t j0, int64_t pos0,
                                                  const int64_t (&pos)[2], float scale_log2, int lane, float (&m)[2],
                                                  float (&l)[2], float (&alpha)[2]) {
  if (j0 + kKeys - 1 <= pos0) {
    OnlineSoftmaxTile<kKeys, false>(s, j0, pos, scale_log2, lane, m, l, alpha);
  } else {
    OnlineSoftmaxTile<kKeys>(s, j0, pos, scale_log2, lane, m, l, alpha);
  }
}

// Each row's running sum l over the quad of lanes that holds the row's keys (lanes 4g .. 4g + 3).
__device__ __forceinline__ void SumRowsOverQuad(float (&l)[2]) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    l[half] += __shfl_xor_sync(0xffffffffu, l[half], 1);
    l[half] += __shfl_xor_sync(0xffffffffu, l[half], 2);
  }
}

// The key tiles a block of a sequence of `length` positions attends in `window` (MlaKeyWindow):
// `count` tiles from tile 0 of the window's key tiles (0 where its last query, at position
// `max_key`, precedes the window), which hold `length` positions from `begin` (KeyTile's length).
struct WindowTiles {
  int64_t begin, count, length;
};
__device__ __forceinline__ WindowTiles TilesInWindow(const MlaKeyWindow& window, int64_t length, int64_t max_key) {
  const int64_t end = window.end > 0 ? window.end : length;
  const int64_t last = max_key < end - 1 ? max_key : end - 1;
  return {window.begin, last < window.begin ? 0 : (last - window.begin) / kMlaExpandedTileKeys + 1,
          end - window.begin};
}

// This block's share of `count` tiles where the call splits them over gridDim.z blocks: `count`
// tiles from tile `first` (0 for the last blocks of a split with fewer tiles than blocks).
struct SplitTiles {
  int64_t first, count;
};
__device__ __forceinline__ SplitTiles TilesOfSplit(int64_t count) {
  const int64_t per = (count + gridDim.z - 1) / gridDim.z;
  const int64_t first = per * blockIdx.z;
  return {first, first < count ? (count - first < per ? count - first : per) : 0};
}

// Where a block writes its rows: the call's out and window (row first_row + r), or where the call
// splits the keys, its slice of the split buffers (MlaKeySplits), whose window takes no merge.
struct RowSink {
  TensorView out;
  MlaKeyWindow window;
  int64_t first_row;
};
__device__ __forceinline__ RowSink SinkOf(const MlaExpandedArgs& a, int64_t first_row, int tile_rows) {
  if (gridDim.z == 1) return {a.out, a.call.window, first_row};
  const int64_t rows = static_cast<int64_t>(gridDim.z) * gridDim.x * tile_rows;
  MlaKeyWindow window;
  window.lse = a.call.splits.lse;
  return {TensorView{a.call.splits.out, DType::kF32, rows, a.out.cols, a.out.cols}, window,
          (static_cast<int64_t>(blockIdx.z) * gridDim.x + blockIdx.x) * tile_rows};
}

// A split block with no tiles: its rows' log-sum-exps -inf (`threads` threads), so that the merge
// skips its outputs, which stay unwritten.
__device__ __forceinline__ void MarkRowsUnreached(const RowSink& sink, int rows, int head, int heads, int thread,
                                                  int threads) {
  for (int r = thread; r < rows; r += threads) sink.window.lse[(sink.first_row + r) * heads + head] = -INFINITY;
}

// How a row's output is written: own · its unnormalised accumulator + earlier · the output as it
// is, and its log-sum-exp after (log2 domain). m: the row's reference maximum, l: its sum over the
// quad; lse_slot: the row's entry of window.lse (read where window.merge).
struct RowFinish {
  float own = 0.0f, earlier = 0.0f, lse = -INFINITY;
};
__device__ __forceinline__ RowFinish FinishRow(const MlaKeyWindow& window, float m, float l, const float* lse_slot) {
  RowFinish f;
  if (l == 0.0f) {  // no key of the window reaches the row: what earlier windows gave stays
    if (window.merge) {
      f.earlier = 1.0f;
      f.lse = *lse_slot;
    }
    return f;  // without earlier windows (a split's share of keys): zero, and -inf
  }
  f.lse = m + log2f(l);
  if (!window.merge) {
    f.own = 1.0f / l;
    return f;
  }
  const float before = *lse_slot, top = fmaxf(before, f.lse);
  const float w_before = exp2f(before - top), w_own = exp2f(f.lse - top), total = w_before + w_own;
  f.own = w_own / (total * l);
  f.earlier = w_before / total;
  f.lse = top + log2f(total);
  return f;
}

// A lane's two rows' finish (rows row_lo and row_lo + 8 of the block, those below `rows`), their
// entries of window.lse read where they merge. Call StoreRowLse after writing the outputs.
__device__ __forceinline__ void FinishRows(const MlaKeyWindow& window, const float (&m)[2], const float (&l)[2],
                                           int64_t first_row, int row_lo, int rows, int head, int heads,
                                           RowFinish (&f)[2]) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = row_lo + 8 * half;
    const float* slot = window.lse == nullptr ? nullptr : window.lse + (first_row + r) * heads + head;
    f[half] = r < rows ? FinishRow(window, m[half], l[half], slot) : RowFinish{};
  }
}

// One output pair of a row: own · (a, b) + earlier · what `dst` holds.
__device__ __forceinline__ void StoreFinished(float* dst, const RowFinish& f, float a, float b) {
  float2 v = make_float2(a * f.own, b * f.own);
  if (f.earlier != 0.0f) {
    const float2 before = *reinterpret_cast<const float2*>(dst);
    v.x = fmaf(before.x, f.earlier, v.x);
    v.y = fmaf(before.y, f.earlier, v.y);
  }
  *reinterpret_cast<float2*>(dst) = v;
}

// The rows' log-sum-exps into window.lse, by the first lane of each quad once all four have read
// theirs (FinishRows).
__device__ __forceinline__ void StoreRowLse(const MlaKeyWindow& window, const RowFinish (&f)[2], int64_t first_row,
                                            int row_lo, int rows, int head, int heads, int lane) {
  if (window.lse == nullptr) return;
  __syncwarp();
  if ((lane & 3) != 0) return;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = row_lo + 8 * half;
    if (r < rows) window.lse[(first_row + r) * heads + head] = f[half].lse;
  }
}

}  // namespace deltaserve::kernels::cuda
