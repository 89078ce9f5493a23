// What the grouped expert kernels share (moe_grouped.cu groups the slots by expert and launches
// the products; moe_grouped_wgmma.cu holds the wide-tile products for Hopper; moe_grouped_rows.cu
// lays the grouped rows out for cuBLAS's grouped products).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace deltaserve::kernels::cuda {

// The grouping: positions [offsets[e], offsets[e + 1]) of sorted_slots hold the slots (t*k + s)
// routed to local expert e; tile i covers positions [tile_begin[i], +BM) of expert tile_expert[i].
struct GroupPlan {
  int32_t* offsets;       // num_local + 1
  int32_t* cursor;        // num_local: counts, then next free positions while placing
  int32_t* sorted_slots;  // slots
  int32_t* tile_expert;   // max_tiles
  int32_t* tile_begin;    // max_tiles
  int32_t* num_tiles;     // 1
};

// The (token, slot) pairs of a call and the local expert each is routed to.
struct Routing {
  const int32_t* expert_ids;
  int64_t ids_stride;
  int top_k;
  int first_expert;
  int num_local;
  // The local expert of a slot, or -1 where another shard holds it.
  __device__ int LocalExpert(int64_t slot) const {
    const int e = expert_ids[(slot / top_k) * ids_stride + slot % top_k] - first_expert;
    return e >= 0 && e < num_local ? e : -1;
  }
};

constexpr int kMaxLocalExperts = 1024;
// Each tile holds at most BM rows of one expert: at most slots / BM full tiles plus one partial
// tile per expert that has rows.
int64_t MaxTiles(int64_t slots, int64_t num_local, int bm);
// A plan's arrays carved from the start of scratch, and the bytes they take (256-byte aligned).
GroupPlan CarvePlan(void* scratch, int64_t num_local, int64_t slots, int64_t max_tiles);
size_t PlanBytes(int64_t num_local, int64_t slots, int64_t max_tiles);
// Fills the plan: offsets, sorted_slots and the tiles of bm rows.
int LaunchGrouping(const Routing& routing, int64_t slots, int bm, const GroupPlan& plan, cudaStream_t stream);

// What the two grouped products share: the A rows are the gathered tokens (gate/up, from the
// bf16 copy of x) or the grouped hidden rows (down); B is each local expert's [n, k] weight.
struct GemmArgs {
  const __nv_bfloat16* a;
  int64_t a_ld;
  const __nv_bfloat16* const* b0;  // gate (gate/up) or down, per local expert
  const __nv_bfloat16* const* b1;  // up (gate/up only)
  int n;
  int k;
  int top_k;
  GroupPlan plan;
  __nv_bfloat16* hidden;  // gate/up output: [slots, n] by grouped position
  float* slot_out;        // down output, row = slot
  int64_t slot_ld;
  // The wide tiles' tensor maps of each local expert's weights (MoeExpertTable::wide_tile_maps).
  const void* weight_maps = nullptr;
  __nv_bfloat16* slot_out_bf16 = nullptr;  // down output in bf16 instead of slot_out (wide tiles)
};

// Rows per tile of the wide-tile products (whether they run here: MoeWgmmaRuns, launchers.h).
constexpr int kWgmmaTileRows = 128;
// The gate/up products with SwiGLU (gate_up) or the down products with the scatter, over a plan
// grouped in tiles of kWgmmaTileRows rows: tiles of 128 rows × 128 gate and 128 up columns, or ×
// 256 down columns, on warpgroup products. The weights' tiles arrive through args.weight_maps; the
// down products' A (args.a: `slots` grouped rows, 16-byte aligned) through a tensor map of its own.
// Slot rows take two-element stores (even slot_ld, data aligned to two elements).
int LaunchMoeWgmmaGemm(const GemmArgs& args, bool gate_up, int64_t max_tiles, int64_t slots, cudaStream_t stream);

}  // namespace deltaserve::kernels::cuda
