// The plain descriptors the Backend operations take (sequences in a packed batch and their
// state, layer parameters). C++17 and free of library types, so CUDA kernels include them too.
#pragma once

#include <cstdint>

#include "kernels/tensor.h"

namespace deltaserve::kernels {

// y = x · wᵀ, one of several independent products issued together (Backend::MatMuls).
struct MatMulProduct {
  TensorView x, w, y;
};

// A sequence's rows [begin, begin + length) inside a packed batch.
struct SequenceRows {
  int64_t begin = 0;
  int64_t length = 0;
};

struct ConvSequence {
  SequenceRows rows;
  // The last (kernel - 1) inputs before this step, oldest first: [kernel - 1, channels] F32.
  // Zero for a new sequence. Updated in place to the last (kernel - 1) inputs after this step.
  float* tail = nullptr;
};

enum class KdaAlgorithm : uint8_t {
  kChunked,    // chunkwise WY/UT form, chunk 64 (spec §2.4): prefill
  kRecurrent,  // token by token (spec §2.3): decode
};

struct KdaSequence {
  SequenceRows rows;
  KdaAlgorithm algorithm = KdaAlgorithm::kChunked;
  // [num_heads, head_dim (key), head_dim (value)] F32, updated in place.
  float* state = nullptr;
};

// Inputs of the KDA core for one layer (spec §2.2 steps 4-7).
struct KdaInputs {
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  TensorView q;            // [T, H*d] after conv + SiLU, not yet normalised
  TensorView k;            // [T, H*d] likewise
  TensorView v;            // [T, H*d]
  TensorView gate_logits;  // [T, H*d] f_b(f_a(x)), before dt_bias and softplus
  TensorView beta_logits;  // [T, H] b_proj(x), before the sigmoid
  TensorView a_log;        // H values (checkpoint shape [1, 1, H, 1])
  TensorView dt_bias;      // H*d values
};

// One decode token per sequence through the whole KDA core (Backend::KdaDecodeStep).
struct KdaDecodeSequence {
  int64_t row = 0;             // the sequence's row in the batch
  float* state = nullptr;      // [num_heads, head_dim, head_dim] F32, updated in place
  float* conv_tails[3] = {};   // q, k, v: [kernel - 1, H*d] F32 (ConvSequence::tail), updated
};

struct KdaDecodeInputs {
  // q, k and v here are the projections *before* their short convs; the rest as KdaInputs.
  KdaInputs core;
  TensorView conv_weights[3];  // q, k, v: [H*d, kernel] (the checkpoint's [C, 1, W])
  TensorView out_gate;         // [T, H*d] g_b(g_a(x)), before the sigmoid
  TensorView out_norm;         // head_dim values: o_norm
  float eps = 0;
};

enum class MlaForm : uint8_t {
  kExpanded,  // per-head keys and values from the latent cache (prefill, spec §3.2)
  kAbsorbed,  // queries absorbed into the latent space (decode, spec §3.3)
};

#if defined(__CUDACC__)
#define DS_HOST_DEVICE __host__ __device__
#else
#define DS_HOST_DEVICE
#endif

// Where the elements of cache row `row` sit in its latent page (LatentPages), in elements from the
// page's start. F32 pages, and BF16 ones of a width that is not a multiple of 64, hold whole rows
// one after another. BF16 pages of a width that is a multiple of 64 (128-byte column groups) hold
// one group of every row after another, [width / 64][page_rows][64], each row's 16-byte chunks
// within its group XOR-swizzled by the row, chunk c at c ^ (row mod 8): the 128-byte swizzle of
// Hopper's shared-memory operand tiles, so that consecutive rows of one group copied as one
// block land in shared memory as the tensor-core decode kernel reads them (mla_absorbed_tc.cu).
// `row` is the row of the cache, not of the page. The row's place is worked out once (Place),
// its elements' after (Offset).
struct LatentRowPlacement {
  int64_t start = 0;         // the row's first element (its first group's)
  int64_t group_stride = 0;  // between its column groups; 0: a whole row
  int64_t swizzle = 0;

  DS_HOST_DEVICE int64_t Offset(int64_t e) const {
    if (group_stride == 0) return start + e;
    return start + (e >> 6) * group_stride + ((((e >> 3) & 7) ^ swizzle) << 3) + (e & 7);
  }
  DS_HOST_DEVICE static LatentRowPlacement Place(DType dtype, int64_t width, int64_t page_rows, int64_t row) {
    const int64_t in_page = row % page_rows;
    if (dtype != DType::kBF16 || width % 64 != 0) return {in_page * width, 0, 0};
    return {in_page * 64, page_rows * 64, row & 7};
  }
};

DS_HOST_DEVICE inline int64_t LatentOffset(DType dtype, int64_t width, int64_t page_rows, int64_t row, int64_t e) {
  return LatentRowPlacement::Place(dtype, width, page_rows, row).Offset(e);
}

// An MLA layer's latent cache in pages of page_rows rows: each page holds [page_rows,
// kv_lora_rank + qk_rope_dim] of `dtype` (the normalised latent, then the shared key part; F32,
// or BF16 where the backend keeps its caches so: Backend::LatentCacheDType), placed as
// LatentOffset (LatentRowPlacement) says; row r of the cache is row r % page_rows of
// pages[r / page_rows].
struct LatentPages {
  void* const* pages = nullptr;
  int64_t page_rows = 0;
  DType dtype = DType::kF32;

  // Row `row` of F32 pages (whole rows).
  DS_HOST_DEVICE float* Row(int64_t row, int64_t width) const {
    return static_cast<float*>(pages[row / page_rows]) + (row % page_rows) * width;
  }
  // The page that holds row `row`, as elements of T (float for F32 pages, a 2-byte type for BF16
  // ones); its element e is at LatentOffset(dtype, width, page_rows, row, e).
  template <typename T>
  DS_HOST_DEVICE T* PageOf(int64_t row) const {
    return static_cast<T*>(pages[row / page_rows]);
  }
};

struct MlaSequence {
  SequenceRows rows;
  MlaForm form = MlaForm::kExpanded;
  // Rows [0, num_cached) hold the history; the call appends this step's rows after them, so
  // pages holding num_cached + rows.length rows are a precondition.
  LatentPages cache;
  int64_t num_cached = 0;
};

// One draw from a row of logits (Backend::SampleRows; penalties, if any, already applied):
// weights exp((x - max) / temperature) over the top_k largest logits (top_k <= 0: all), then the
// top_p nucleus, then those below min_p times the largest dropped, and the token where the
// cumulative weight in ascending id order first exceeds uniform * their sum (kernels/sampling.h).
struct RowSampling {
  float temperature = 1.0f;  // 0: the greedy token
  int32_t top_k = 0;
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]
  double uniform = 0.0;      // [0, 1): the sequence's random draw
};

// A sequence's penalties on one token's logit (Backend::ApplyPenalties): the repetition penalty
// where the token was seen (prompt or generated; 1 where it was not, or no penalty), then
// logit -= frequency · count + presence · (count > 0) for its `count` generated occurrences.
struct LogitPenalty {
  int64_t row = 0;    // the logits row
  int32_t token = 0;  // its column; < 0: no entry (padding)
  int32_t count = 0;
  float repetition = 1.0f;
  float frequency = 0.0f;
  float presence = 0.0f;
};

struct MlaParams {
  int64_t num_heads = 0;
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_dim = 0;
  int64_t qk_rope_dim = 0;
  int64_t v_dim = 0;
  float scale = 0;  // softmax scale, 1/sqrt(qk_nope_dim + qk_rope_dim)
};

struct MoeRouting {
  int64_t top_k = 0;
  int64_t num_groups = 1;      // grouped top-k when > 1
  int64_t top_groups = 1;      // groups kept
  bool renormalize = true;     // weights / (sum + 1e-20)
  float scaling = 1.0f;        // routed_scaling_factor
  bool biased_weights = false; // HF remote-code variant: weights from sigmoid + bias (spec §9.1)
};

struct ExpertWeights {
  TensorView gate;  // w1 [I, D]
  TensorView up;    // w3 [I, D]
  TensorView down;  // w2 [D, I]
};

}  // namespace deltaserve::kernels
