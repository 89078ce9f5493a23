// Host-callable launchers of the CUDA kernels: plain C++ signatures (views of device memory,
// an opaque stream), so this header compiles without CUDA. Every launcher enqueues on `stream`
// and returns the launch's cudaError_t as an int (0: success); the backend turns it into a
// failure. Arrays of per-sequence descriptors (`seqs`) live in device memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/ops.h"

namespace deltaserve::kernels::cuda {

using Stream = void*;  // cudaStream_t

// The dtypes of the activations a kernel may read or write as such (LoadAt / StoreAt): F32, or
// BF16 (the KDA core's prefill activations, Backend::KdaActivationDType).
inline bool IsActivationDType(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16; }

// out[t] = table[ids[t]] (table any float dtype, out F32). ids: n device int32.
int LaunchEmbed(const int32_t* ids, int64_t n, TensorView table, TensorView out, Stream stream);
// ids[r] (I32, [rows, 1]) = the index of x's largest value in row r, lowest on ties; -1 when
// the row holds a NaN or +inf, or only -inf (Backend::ArgmaxRows).
int LaunchArgmaxRows(TensorView x, TensorView ids, Stream stream);
// kernels::SampleRow for each row of x (Backend::SampleRows): draws[r] (device memory) for row r,
// the token (or -1) into ids [x.rows, 1] I32.
int LaunchSampleRows(TensorView x, const RowSampling* draws, TensorView ids, Stream stream);
// kernels::PenalizedLogit on x's logit of each of the n penalties (device memory; Backend::
// ApplyPenalties), those with a token < 0 or outside x skipped.
int LaunchApplyPenalties(TensorView x, const LogitPenalty* penalties, int64_t n, Stream stream);
// acc += x (F32).
int LaunchAdd(TensorView acc, TensorView x, Stream stream);
// out = silu(gate) * up (F32).
int LaunchSwiGlu(TensorView gate, TensorView up, TensorView out, Stream stream);
// Row-wise RMSNorm; weight any float dtype with x.cols values; out F32 (which may alias x) or
// BF16.
int LaunchRmsNorm(TensorView x, TensorView weight, float eps, TensorView out, Stream stream);
// acc += x, then out = RmsNorm(acc, weight): LaunchAdd and LaunchRmsNorm in one pass, same bits.
int LaunchAddRmsNorm(TensorView acc, TensorView x, TensorView weight, float eps, TensorView out, Stream stream);
// Per head of head_dim: rmsnorm(x) * weight * sigmoid(gate); x, gate and out F32 or BF16.
int LaunchGatedRmsNorm(TensorView x, TensorView gate, TensorView weight, int64_t head_dim,
                       float eps, TensorView out, Stream stream);
// Depthwise causal conv + SiLU with per-sequence tails (see Backend::CausalConvSilu), a thread per
// run of kConvRunRows tokens of one channel (four where the rows allow 16-byte loads, at up to 4
// taps): `runs` (device memory) lists every run of every sequence with rows, seqs[run.seq]'s
// tokens [run.first, run.first + kConvRunRows); out (F32 or BF16) must not be x (F32).
inline constexpr int kConvRunRows = 16;
struct ConvRun {
  int32_t seq;
  int32_t first;
};
int LaunchCausalConvSilu(TensorView x, TensorView weight, const ConvSequence* seqs, int64_t num_seqs,
                         const ConvRun* runs, int64_t num_runs, TensorView out, Stream stream);
// The delta rule token by token, gate, beta and q/k L2 norm fused (Backend::KdaAttention).
// q, k, v, the gate logits and out F32 or BF16 (one dtype). Supports head_dim in
// {16, 24, 32, 48, 64, 96, 128}; returns cudaErrorInvalidValue otherwise.
int LaunchKdaRecurrent(const KdaInputs& in, const KdaSequence* seqs, int64_t num_seqs,
                       TensorView out, Stream stream);
// Whether the recurrent kernel takes `head_dim`.
bool KdaRecurrentSupports(int64_t head_dim);
// Whether the decode step takes `head_dim` and short convs of `conv_kernel` taps (at most
// kMaxDecodeConvKernel; the model's have 4), the same for q, k and v.
constexpr int64_t kMaxDecodeConvKernel = 4;
bool KdaDecodeStepSupports(int64_t head_dim, int64_t conv_kernel);
// Backend::KdaDecodeStep in one kernel: per (sequence, head) the three short convs (tails
// advanced), the delta rule (state updated in place) and the gated RMSNorm; head dims as above.
int LaunchKdaDecodeStep(const KdaDecodeInputs& in, const KdaDecodeSequence* seqs, int64_t num_seqs,
                        TensorView out, Stream stream);
// One chunk (at most 64 rows) of a sequence, for the chunked KDA kernels.
struct KdaChunkRef {
  int64_t row_begin = 0;
  int32_t length = 0;
  int32_t sequence = 0;  // index into the launch's sequences
};
// The chunk table LaunchKdaChunked takes (before upload) for `num_seqs` host descriptors: each
// sequence's rows in chunks of at most 64, in order; first_chunk has num_seqs + 1 entries;
// longest_first lists the sequences by descending chunk count (ties in order).
struct KdaChunkTable {
  std::vector<KdaChunkRef> chunks;
  std::vector<int32_t> first_chunk;
  std::vector<int32_t> longest_first;
};
KdaChunkTable BuildKdaChunkTable(const KdaSequence* seqs, int64_t num_seqs);
// Whether the chunked KDA kernels support `head_dim` (16, 32, 48, 64, 96, 128).
bool KdaChunkedSupports(int64_t head_dim);
// Device scratch the chunked KDA launch needs for `num_chunks` chunks.
size_t KdaChunkedScratchBytes(int64_t num_chunks, int64_t heads, int64_t head_dim);
// The chunked (prefill) form of Backend::KdaAttention (spec §2.4) for `num_seqs` sequences
// split into `num_chunks` chunks: sequence i owns chunks [first_chunk[i], first_chunk[i + 1]), in
// order (first_chunk has num_seqs + 1 entries); the scan, whose blocks walk a sequence's chunks
// one after another, starts its blocks in the order of longest_first (num_seqs entries), so the
// longest chains are not the last to start. Tensor cores, bf16 intermediates; q, k, v, the gate
// logits and out F32 or BF16 (one dtype).
int LaunchKdaChunked(const KdaInputs& in, const KdaSequence* seqs, int64_t num_seqs,
                     const KdaChunkRef* chunks, const int32_t* first_chunk, const int32_t* longest_first,
                     int64_t num_chunks, void* scratch, TensorView out, Stream stream);
// Copies each sequence's new latent rows [rows.begin, +length) after its cached rows.
int LaunchMlaAppendLatent(TensorView latent, const MlaSequence* seqs, int64_t num_seqs,
                          Stream stream);
// Cache rows [first, first + dst.rows) of the sequence *seq (a device descriptor; rows `width`
// wide) into dst (F32 or BF16), contiguous: their first dst.cols columns.
int LaunchMlaGatherLatent(const MlaSequence* seq, int64_t first, int64_t width, TensorView dst, Stream stream);
// Expanded MLA attention for the sequences whose per-head keys/values were expanded into
// kv_all[i] ([num_cached + length, H*(nope+v)] F32, device pointers in `kv_all`).
int LaunchMlaExpandedAttention(const MlaParams& params, TensorView q, const MlaSequence* seqs,
                               const float* const* kv_all, int64_t num_seqs, TensorView out,
                               Stream stream);
// Absorbed MLA attention (q folded into the latent space with kv_b's W_UK, W_UV after).
// max_keys: the longest history plus new rows of the absorbed sequences. tensor_cores: bf16
// query, keys and probabilities on Hopper's warpgroup products with fp32 accumulation (serving;
// the Kimi shapes, see MlaAbsorbedTcSupports, BF16 latent pages, where MlaAbsorbedTcRuns: the
// caller's choice), otherwise fp32 on CUDA cores (F32 or BF16 pages). Needs
// MlaAbsorbedScratchFloats(...) floats of scratch (partial softmax states, the absorbed query). On
// tensor cores the key tiles are spread over the blocks by `key_split`: the uploaded table of
// BuildMlaKeySplit(host seqs, num_seqs, q.rows, MlaKeySplitBlocks(q.rows, max_keys)), with the same
// max_keys. Where `append` has data, the call first appends it as LaunchMlaAppendLatent would (on
// tensor cores inside the q absorption, one launch fewer): pass it only where nothing earlier in
// the call reads the new rows (no expanded sequences).
// Whether the tensor-core form runs here: an sm_90a build on a compute capability 9.0 GPU.
bool MlaAbsorbedTcRuns();
size_t MlaAbsorbedScratchFloats(const MlaParams& params, int64_t rows, int64_t max_keys, bool tensor_cores);
int LaunchMlaAbsorbedAttention(const MlaParams& params, TensorView q, TensorView kv_b,
                               const MlaSequence* seqs, int64_t num_seqs, int64_t max_keys,
                               bool tensor_cores, const int32_t* key_split, float* scratch, TensorView out,
                               Stream stream, TensorView append = {});
// How the tensor-core absorbed attention spreads key tiles (64 keys) over its blocks: the tiles
// of every absorbed row, rows in order, cut into `blocks` runs of equal length, so that a batch
// of unequal histories keeps every SM busy to the end. A run crosses from one row into the next
// where it must; each (row, block) piece is a segment whose softmax state the merge combines
// with the row's others. The table (int32, before upload): a MlaKeySplitBlock per block, a
// MlaKeySplitRow per absorbed row (room for `rows`), a MlaRowSlots per packed row.
struct MlaKeySplitRow {
  int32_t t;    // packed row
  int32_t seq;  // its sequence
  int32_t tiles;
};
struct MlaKeySplitBlock {
  int32_t row;         // its first absorbed row (index among them)
  int32_t first_tile;  // in that row
  int32_t tiles;       // the run's length, continuing into the following rows
  MlaKeySplitRow first_row;  // rows[row] again: one load fewer before the block's first copies
};
struct MlaRowSlots {  // a packed row's segment states: slots [first, first + count)
  int32_t first;
  int32_t count;  // 0: not an absorbed row
};
static_assert(sizeof(MlaKeySplitBlock) == 6 * sizeof(int32_t) && sizeof(MlaKeySplitRow) == 3 * sizeof(int32_t) &&
                  sizeof(MlaRowSlots) == 2 * sizeof(int32_t),
              "the table is int32 words");
struct MlaKeySplit {
  std::vector<int32_t> table;
  int64_t blocks = 0;
};
// Where the table's rows and slots begin, in int32 words.
constexpr int64_t MlaKeySplitRowsAt(int64_t blocks) {
  return blocks * static_cast<int64_t>(sizeof(MlaKeySplitBlock) / sizeof(int32_t));
}
constexpr int64_t MlaKeySplitSlotsAt(int64_t blocks, int64_t rows) {
  return MlaKeySplitRowsAt(blocks) + rows * static_cast<int64_t>(sizeof(MlaKeySplitRow) / sizeof(int32_t));
}
// The grid for `rows` packed rows whose longest history plus new rows is max_keys (bucketed by
// the caller the same way for every step of a CUDA graph, whose grid cannot change).
int64_t MlaKeySplitBlocks(int64_t rows, int64_t max_keys);
// For `num_seqs` host descriptors over `rows` packed rows (absorbed rows whose packed index is
// outside [0, rows) are left out, as the kernels leave them).
MlaKeySplit BuildMlaKeySplit(const MlaSequence* seqs, int64_t num_seqs, int64_t rows, int64_t blocks);
// y = x · wᵀ for at most kSkinnyMatMulMaxRows rows of x (F32) and a BF16, F16 or F32 weight, in
// fp32 on CUDA cores, w read once with 16-byte loads: decode-sized products. Needs 16-byte
// aligned rows (SkinnyMatMulSupports); y is F32 or BF16 [x.rows, w.rows].
constexpr int64_t kSkinnyMatMulMaxRows = 8;
bool SkinnyMatMulSupports(TensorView x, TensorView w);
// programmatic: launched as a programmatic dependent of the previous kernel in the stream (see
// WaitForPriorKernels in device_utils.cuh): its blocks may start, and fetch their weight rows
// into L2, while that kernel finishes.
int LaunchSkinnyMatMul(TensorView x, TensorView w, TensorView y, Stream stream, bool programmatic = false);
// Up to kSkinnyMatMulMaxProducts independent products of the same row count in one launch. How
// a reduction is split over warps depends on the launch's rows, so a product's sums may be
// ordered differently than alone (fp32 rounding).
struct SkinnyProduct {
  TensorView x, w, y;
};
constexpr int kSkinnyMatMulMaxProducts = 8;
int LaunchSkinnyMatMuls(const SkinnyProduct* products, int count, Stream stream, bool programmatic = false);
// Sigmoid + bias top-k routing as MoeRoute; ids sorted ascending per token.
int LaunchMoeRoute(TensorView router_logits, TensorView correction_bias, const MoeRouting& routing,
                   TensorView expert_ids, TensorView weights, Stream stream);
// The expert weights of one MoE layer (or shard) for the grouped kernels: device arrays of
// num_local device pointers, each a contiguous bf16 [inner, hidden] (gate, up) or
// [hidden, inner] (down) matrix; local expert e is global expert first_expert + e.
struct MoeExpertTable {
  const void* const* gate = nullptr;
  const void* const* up = nullptr;
  const void* const* down = nullptr;
  int64_t num_local = 0;
  int64_t first_expert = 0;
  int64_t inner = 0;
  // Device array of a MoeWideTileMaps per local expert (EncodeMoeWideTileMaps), or null: the
  // 128-row tiles on warpgroup products need it, and it exists only where they run.
  const void* wide_tile_maps = nullptr;
};
// Whether the 128-row expert tiles on warpgroup products run here: built (sm_90a) and the current
// device of compute capability 9.0.
bool MoeWgmmaRuns();
// The tensor maps (TMA descriptors) the 128-row expert tiles read one expert's weights through:
// gate [inner, hidden], up [inner, hidden], down [hidden, inner], each contiguous bf16, encoded
// into `maps` (copied to 128-byte-aligned device memory before use). False where these tiles do
// not run here or a matrix is not 16-byte aligned.
constexpr size_t kMoeWideTileMapBytes = 3 * 128;
struct alignas(128) MoeWideTileMaps {  // the encoder writes only to 64-byte-aligned maps
  unsigned char bytes[kMoeWideTileMapBytes];
};
bool EncodeMoeWideTileMaps(const void* gate, const void* up, const void* down, int64_t inner, int64_t hidden,
                           MoeWideTileMaps& maps);
// Whether the grouped expert kernels take these shapes and weight dtype (bf16, multiples of 8).
bool MoeGroupedSupports(int64_t hidden, int64_t inner, DType weight_dtype);
// Device scratch LaunchMoeGroupedExperts needs.
size_t MoeGroupedScratchBytes(int64_t tokens, int64_t top_k, int64_t num_local, int64_t hidden,
                              int64_t inner);
// Whether LaunchMoeGroupedExperts takes the 128-row tiles on warpgroup products for a call of
// `slots` slots over these experts (where slot_out's rows also take two-element stores).
bool MoeGroupedWideTiles(int64_t slots, const MoeExpertTable& experts, int64_t wide_tiles_min_rows);
// Backend::MoeExperts without a host round trip: groups the (token, slot) pairs by expert on the
// device, then every active expert's gate/up products with SwiGLU in one launch and the down
// products in another (tensor cores, bf16 inputs, fp32 accumulation), rows scattered to slot_out.
// Calls whose slots average at least wide_tiles_min_rows per local expert take 128-row tiles on
// Hopper's warpgroup products where the build has them (sm_90a), others 16- or 64-row tiles.
// slot_out F32, or BF16 (each sum rounded once) where the 128-row tiles are taken.
int LaunchMoeGroupedExperts(TensorView x, TensorView expert_ids, const MoeExpertTable& experts,
                            void* scratch, TensorView slot_out, Stream stream, int64_t wide_tiles_min_rows);
// Backend::MoeExperts through cuBLAS's grouped products (moe_cublas_grouped.cc), whose device
// steps are these (moe_grouped_rows.cu): LaunchMoeGroupRows groups the slots by local expert as
// LaunchMoeGroupedExperts does and gathers each placed slot's token row of x, rounded to bf16,
// in that order; after the gate and up products LaunchMoeSwiGluRows writes the hidden rows over
// the gate rows; after the down products LaunchMoeScatterGroupedRows copies each placed row to its
// slot of slot_out, widened to fp32. `count` is offsets[num_local], read back by the host between
// the steps.
struct MoeGroupedRows {
  void* plan;             // the grouping's arrays, offsets and sorted_slots among them
  int32_t* offsets;       // num_local + 1: local expert e's rows are [offsets[e], offsets[e + 1])
  int32_t* sorted_slots;  // the slot of each placed row
  void* x;                // [slots, hidden] bf16
  void* gate;             // [slots, inner] bf16, then the hidden rows
  void* up;               // [slots, inner] bf16
  void* down;             // [slots, hidden] bf16 (no fp32 from bf16 in cuBLAS's grouped products)
  const void** operands;  // kMoeGroupedRowsOperands * num_local device pointers
};
constexpr int64_t kMoeGroupedRowsOperands = 9;  // gate/up: A, B, C twice; down: A, B, C
size_t MoeGroupedRowsScratchBytes(int64_t tokens, int64_t top_k, int64_t num_local, int64_t hidden,
                                  int64_t inner);
MoeGroupedRows CarveMoeGroupedRows(void* scratch, int64_t tokens, int64_t top_k, int64_t num_local,
                                   int64_t hidden, int64_t inner);
int LaunchMoeGroupRows(TensorView x, TensorView expert_ids, int64_t first_expert, int64_t num_local,
                       const MoeGroupedRows& rows, Stream stream);
int LaunchMoeSwiGluRows(const MoeGroupedRows& rows, int64_t count, int64_t inner, Stream stream);
int LaunchMoeScatterGroupedRows(const MoeGroupedRows& rows, int64_t count, TensorView slot_out, Stream stream);
// The same products for a few slots (decode), without grouping: warps own output columns of
// one slot (one each in gate/up, two in down), fp32 activations and hidden rows, every routed
// expert's weights read once per slot.
// Applies where MoeGroupedSupports does and x is F32 with 16-byte aligned rows.
bool MoeDecodeSupports(TensorView x, int64_t slots);
size_t MoeDecodeScratchBytes(int64_t slots, int64_t inner);
// programmatic: the down product is launched as a programmatic dependent of the gate/up product
// (it fetches its weights while that one finishes).
int LaunchMoeDecodeExperts(TensorView x, TensorView expert_ids, const MoeExpertTable& experts,
                           void* scratch, TensorView slot_out, Stream stream, bool programmatic = false);
// The experts of Backend::MoeFfn for a few tokens, after its routing: every slot's gate/up
// products in one launch as LaunchMoeDecodeExperts (with_shared: each token's slots begin with the
// shared expert, the tables' entry num_local), then per output column of a token its slots' down
// products, weighted and summed into out in another (no slot rows, no combine, no launches of
// the shared expert's own). At most kMoeDecodeFfnMaxSlots slots per token with the shared one;
// scratch: MoeDecodeScratchBytes of them all.
constexpr int kMoeDecodeFfnMaxSlots = 17;
int LaunchMoeDecodeFfn(TensorView x, TensorView expert_ids, TensorView weights, const MoeExpertTable& experts,
                       bool with_shared, void* scratch, TensorView out, Stream stream, bool programmatic);
// out[t] += Σ_s weights[t, s] * slot_out[t*k + s]; slot_out F32 or BF16.
int LaunchMoeCombine(TensorView slot_out, TensorView weights, TensorView out, Stream stream);
// dst row i = src row rows[i] (rows: n device int64), any dtype.
int LaunchGatherRows(TensorView src, const int64_t* rows, int64_t n, TensorView dst, Stream stream);
// dst row rows[i] = src row i.
int LaunchScatterRows(TensorView src, const int64_t* rows, int64_t n, TensorView dst, Stream stream);
// F32 view -> contiguous BF16 or F16 (dtype) buffer of src.rows x src.cols.
int LaunchConvertF32(TensorView src, DType dtype, void* dst, Stream stream);
// Any float view -> contiguous F32 buffer of src.rows x src.cols.
int LaunchWidenToF32(TensorView src, float* dst, Stream stream);

}  // namespace deltaserve::kernels::cuda
