// Where an element of an expanded MLA sequence's key tiles sits (the layout:
// kernels/cuda/mla_expanded_tc.h), for the kernel that writes them and the two that read them.
#pragma once

#include <cstdint>

#include "kernels/cuda/mla_expanded_tc.h"

namespace deltaserve::kernels::cuda {

// A tile is five blocks of 64 rows × 128 bytes: the keys' columns 0-63, 64-127, 128-191, then the
// values' 0-63 and 64-127. Chunk c (0 .. 39: 8 bf16, keys' columns 8c .. for c < 24, values'
// columns 8(c - 24) .. after) of row r of the tile sits at this byte offset.
__device__ __forceinline__ uint32_t KeyTileChunkOffset(int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * 64 * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

// Where the tile holding position `key` of head `head` starts, in bytes from the sequence's first
// tile (a sequence of `length` positions).
__device__ __forceinline__ int64_t KeyTileStart(int head, int64_t length, int64_t key) {
  const int64_t tile = static_cast<int64_t>(head) * MlaExpandedKeyTiles(length) + key / kMlaExpandedTileKeys;
  return tile * kMlaExpandedTileBytes;
}
__device__ __forceinline__ const unsigned char* KeyTile(const void* key_tiles, int head, int64_t length, int64_t key) {
  return static_cast<const unsigned char*>(key_tiles) + KeyTileStart(head, length, key);
}

}  // namespace deltaserve::kernels::cuda
