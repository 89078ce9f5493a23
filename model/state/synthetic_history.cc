// Synthetic histories: states filled with counter-based pseudo-random values through the
// backend's Upload, block by block, so any backend and any length work with bounded host memory.
#include "model/state/synthetic_history.h"

#include <algorithm>
#include <vector>

#include "base/check.h"

namespace deltaserve::model {
namespace {

constexpr float kKdaStateScale = 0.05f;  // |S| entries stay small, as a decayed state's do
constexpr float kUnitScale = 1.7320508f;  // sqrt(3): uniform values of RMS 1

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// `count` values uniform in [-scale, scale) from stream `stream` of `seed`.
std::vector<float> UniformValues(uint64_t seed, uint64_t stream, int64_t count, float scale) {
  const uint64_t key = SplitMix64(seed ^ SplitMix64(stream));
  std::vector<float> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t bits = SplitMix64(key + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull);
    const float unit = static_cast<float>(bits >> 40) * 0x1.0p-24f;  // [0, 1)
    values[static_cast<size_t>(i)] = scale * (2.0f * unit - 1.0f);
  }
  return values;
}

void UploadRandom(kernels::Backend& backend, const kernels::Tensor& tensor, uint64_t seed,
                  uint64_t stream, float scale) {
  const std::vector<float> values = UniformValues(seed, stream, tensor.view().numel(), scale);
  backend.Upload(values.data(), tensor.view());
}

}  // namespace

void FillSyntheticHistory(SequenceState& state, int64_t length, int64_t spare_rows,
                          uint64_t seed) {
  DS_CHECK(state.num_tokens() == 0 && length >= 0 && spare_rows >= 0);
  const KimiLinearConfig& config = state.config();
  kernels::Backend& backend = state.backend();
  for (int64_t layer = state.layer_begin(); layer < state.layer_end(); ++layer) {
    const uint64_t stream = static_cast<uint64_t>(layer) * 8;
    if (config.IsKda(layer)) {
      KdaLayerState& kda = state.kda(layer);
      UploadRandom(backend, kda.recurrent, seed, stream, kKdaStateScale);
      for (size_t i = 0; i < kda.conv_tails.size(); ++i) {
        UploadRandom(backend, kda.conv_tails[i], seed, stream + 1 + i, kUnitScale);
      }
      continue;
    }
    // The pages for length + spare_rows rows.
    state.ReserveLatent(layer, length + spare_rows);
    MlaLayerState& mla = state.mla(layer);
    if (mla.capacity() < length + spare_rows) return;  // out of memory: the backend reports it
    const int64_t width = config.mla_latent_size();
    const int64_t block_rows = std::min(length, kSyntheticBlockRows);
    const std::vector<float> block = UniformValues(seed, stream, block_rows * width, kUnitScale);
    // Where pages tile the block, a whole page past the first block holds the same bytes as the
    // first block's page at the same place (the BF16 swizzle's row & 7 too): it is copied on
    // the device, so that a long cache fills at the device's rate, not the host conversion's.
    const bool pages_tile_block = kSyntheticBlockRows % mla.page_rows == 0;
    for (int64_t row = 0; row < length; row += block_rows) {
      const int64_t rows = std::min(block_rows, length - row);
      mla.ForEachRange(row, rows, [&](int64_t first, int64_t n, kernels::TensorView page) {
        if (pages_tile_block && first >= kSyntheticBlockRows && n == mla.page_rows) {
          const int64_t same = (first % kSyntheticBlockRows) / mla.page_rows;
          backend.Copy(mla.pages[static_cast<size_t>(same)].view(), page);
        } else {
          UploadLatentRows(backend, block.data() + (first - row) * width, page, first, n);
        }
      });
    }
    mla.num_cached = length;
  }
  const uint64_t token_key = SplitMix64(seed ^ 0x746f6b656e73ull);  // "tokens"
  std::vector<int32_t> tokens(static_cast<size_t>(length));
  const uint64_t vocab = static_cast<uint64_t>(config.vocab_size);
  for (int64_t i = 0; i < length; ++i) {
    const uint64_t bits = SplitMix64(token_key + static_cast<uint64_t>(i));
    tokens[static_cast<size_t>(i)] = static_cast<int32_t>(bits % vocab);
  }
  state.AppendTokens(tokens);
}

}  // namespace deltaserve::model
