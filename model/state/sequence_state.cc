#include "model/state/sequence_state.h"

#include <vector>

#include "base/check.h"

namespace deltaserve::model {

using kernels::DType;

SequenceState::SequenceState(const KimiLinearConfig& config, kernels::Backend& backend,
                             int64_t layer_begin, int64_t layer_end, uint64_t model_fingerprint,
                             int64_t latent_page_rows)
    : config_(config),
      backend_(backend),
      layer_begin_(layer_begin),
      layer_end_(layer_end),
      model_fingerprint_(model_fingerprint) {
  DS_CHECK(layer_begin >= 0 && layer_begin < layer_end && layer_end <= config.num_layers);
  DS_CHECK(latent_page_rows > 0);
  layers_.resize(static_cast<size_t>(layer_end - layer_begin));
  const int64_t d = config.kda_head_dim;
  const int64_t width = config.kda_projection_size();
  for (int64_t layer = layer_begin; layer < layer_end; ++layer) {
    LayerState& state = layers_[layer - layer_begin];
    if (config.IsKda(layer)) {
      state.kda.recurrent = backend.Allocate(config.kda_num_heads, d * d, DType::kF32);
      backend.Zero(state.kda.recurrent.view());
      for (kernels::Tensor& tail : state.kda.conv_tails) {
        tail = backend.Allocate(config.conv_kernel_size - 1, width, DType::kF32);
        backend.Zero(tail.view());
      }
    } else {
      state.mla.page_rows = latent_page_rows;
      state.mla.dtype = backend.LatentCacheDType();
    }
  }
}

void SequenceState::AppendTokens(std::span<const int32_t> tokens) {
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
}

KdaLayerState& SequenceState::kda(int64_t layer) {
  DS_CHECK(layer >= layer_begin_ && layer < layer_end_ && config_.IsKda(layer));
  return layers_[layer - layer_begin_].kda;
}
const KdaLayerState& SequenceState::kda(int64_t layer) const {
  DS_CHECK(layer >= layer_begin_ && layer < layer_end_ && config_.IsKda(layer));
  return layers_[layer - layer_begin_].kda;
}
MlaLayerState& SequenceState::mla(int64_t layer) {
  DS_CHECK(layer >= layer_begin_ && layer < layer_end_ && !config_.IsKda(layer));
  return layers_[layer - layer_begin_].mla;
}
const MlaLayerState& SequenceState::mla(int64_t layer) const {
  DS_CHECK(layer >= layer_begin_ && layer < layer_end_ && !config_.IsKda(layer));
  return layers_[layer - layer_begin_].mla;
}

void SequenceState::ReserveLatent(int64_t layer, int64_t extra) {
  MlaLayerState& state = mla(layer);
  while (state.capacity() < state.num_cached + extra) {
    kernels::Tensor page = backend_.Allocate(state.page_rows, config_.mla_latent_size(), state.dtype);
    if (page.empty()) return;  // the backend failed (out of memory); the step reports it
    state.page_data.push_back(page.view().data);
    state.pages.push_back(std::move(page));
  }
}

void UploadLatentRows(kernels::Backend& backend, const float* host, kernels::TensorView page, int64_t first_row,
                      int64_t n) {
  const int64_t page_rows = page.rows, width = page.cols;
  if (page.dtype == DType::kF32) {
    backend.Upload(host, page.Rows(first_row % page_rows, n));
    return;
  }
  DS_CHECK(page.dtype == DType::kBF16);
  std::vector<uint16_t> image(static_cast<size_t>(page.numel()));
  if (n < page_rows) backend.Download(page, image.data());
  for (int64_t r = 0; r < n; ++r) {
    const auto place = kernels::LatentRowPlacement::Place(page.dtype, width, page_rows, first_row + r);
    for (int64_t e = 0; e < width; ++e) image[place.Offset(e)] = kernels::F32ToBF16(host[r * width + e]);
  }
  backend.Upload(image.data(), page);
}

void DownloadLatentRows(kernels::Backend& backend, kernels::TensorView page, int64_t first_row, int64_t n,
                        float* host) {
  const int64_t page_rows = page.rows, width = page.cols;
  if (page.dtype == DType::kF32) {
    backend.Download(page.Rows(first_row % page_rows, n), host);
    return;
  }
  DS_CHECK(page.dtype == DType::kBF16);
  std::vector<uint16_t> image(static_cast<size_t>(page.numel()));
  backend.Download(page, image.data());
  for (int64_t r = 0; r < n; ++r) {
    const auto place = kernels::LatentRowPlacement::Place(page.dtype, width, page_rows, first_row + r);
    for (int64_t e = 0; e < width; ++e) host[r * width + e] = kernels::BF16ToF32(image[place.Offset(e)]);
  }
}

int64_t SequenceState::ByteSize() const { return Bytes(/*latent_at_capacity=*/false); }

int64_t SequenceState::AllocatedByteSize() const { return Bytes(/*latent_at_capacity=*/true); }

int64_t SequenceState::Bytes(bool latent_at_capacity) const {
  int64_t bytes = 0;
  for (int64_t layer = layer_begin_; layer < layer_end_; ++layer) {
    const LayerState& state = layers_[layer - layer_begin_];
    if (config_.IsKda(layer)) {
      bytes += state.kda.recurrent.view().numel() * 4;
      for (const kernels::Tensor& tail : state.kda.conv_tails) bytes += tail.view().numel() * 4;
    } else {
      const int64_t rows = latent_at_capacity ? state.mla.capacity() : state.mla.num_cached;
      bytes += rows * config_.mla_latent_size() * static_cast<int64_t>(kernels::DTypeSize(state.mla.dtype));
    }
  }
  return bytes;
}

}  // namespace deltaserve::model
