#include "model/state/sequence_state.h"

#include <vector>

#include "base/check.h"

namespace deltaserve::model {

using kernels::DType;

SequenceState::SequenceState(const KimiLinearConfig& config, kernels::Backend& backend,
                             int64_t layer_begin, int64_t layer_end, uint64_t model_fingerprint,
                             int64_t latent_page_rows, bool leave_step_room)
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
      state.kda.recurrent = backend.AllocateState(config.kda_num_heads, d * d, DType::kF32, leave_step_room);
      backend.Zero(state.kda.recurrent.view());
      for (kernels::Tensor& tail : state.kda.conv_tails) {
        tail = backend.AllocateState(config.conv_kernel_size - 1, width, DType::kF32, leave_step_room);
        backend.Zero(tail.view());
      }
    } else {
      state.mla.page_rows = latent_page_rows;
      state.mla.dtype = backend.LatentCacheDType();
    }
  }
}

SequenceState::~SequenceState() {
  if (live_ != nullptr) --*live_;
}

void SequenceState::CountIn(std::shared_ptr<std::atomic<int64_t>> live) {
  if (live_ != nullptr) --*live_;
  live_ = std::move(live);
  if (live_ != nullptr) ++*live_;
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

void SequenceState::ReserveLatent(int64_t layer, int64_t extra, bool leave_step_room) {
  MlaLayerState& state = mla(layer);
  while (state.capacity() < state.num_cached + extra) {
    kernels::Tensor page =
        backend_.AllocateState(state.page_rows, config_.mla_latent_size(), state.dtype, leave_step_room);
    if (page.empty()) return;  // the backend failed (out of memory); the step reports it
    state.page_data.push_back(page.view().data);
    state.pages.push_back(std::move(page));
  }
}

namespace {

// A row of `width` elements between fp32 and its place in a BF16 page image, 8 elements at a time:
// 8 consecutive elements from a multiple of 8 sit consecutively in every layout (a 16-byte chunk
// of a swizzled group, or part of a whole row), so the conversions run over contiguous runs
// (measured on the build machine: 0.35 ns per element instead of 1.5 one at a time).
void NarrowRow(const float* src, int64_t width, const kernels::LatentRowPlacement& place, uint16_t* page) {
  int64_t e = 0;
  for (; e + 8 <= width; e += 8) {
    uint16_t* dst = page + place.Offset(e);
    for (int i = 0; i < 8; ++i) dst[i] = kernels::F32ToBF16(src[e + i]);
  }
  for (; e < width; ++e) page[place.Offset(e)] = kernels::F32ToBF16(src[e]);
}

void WidenRow(const uint16_t* page, const kernels::LatentRowPlacement& place, int64_t width, float* dst) {
  int64_t e = 0;
  for (; e + 8 <= width; e += 8) {
    const uint16_t* src = page + place.Offset(e);
    for (int i = 0; i < 8; ++i) dst[e + i] = kernels::BF16ToF32(src[i]);
  }
  for (; e < width; ++e) dst[e] = kernels::BF16ToF32(page[place.Offset(e)]);
}

}  // namespace

void UploadLatentRows(kernels::Backend& backend, const float* host, kernels::TensorView page, int64_t first_row,
                      int64_t n) {
  const int64_t page_rows = page.rows, width = page.cols;
  if (page.dtype == DType::kF32) {
    backend.Upload(host, page.Rows(first_row % page_rows, n));
    return;
  }
  DS_CHECK(page.dtype == DType::kBF16);
  std::vector<uint16_t> image(static_cast<size_t>(page.numel()));
  if (first_row % page_rows != 0) backend.Download(page, image.data());
  for (int64_t r = 0; r < n; ++r) {
    const auto place = kernels::LatentRowPlacement::Place(page.dtype, width, page_rows, first_row + r);
    NarrowRow(host + r * width, width, place, image.data());
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
    WidenRow(image.data(), place, width, host + r * width);
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
