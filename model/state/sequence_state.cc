#include "model/state/sequence_state.h"

#include <algorithm>

#include "base/check.h"

namespace deltaserve::model {

using kernels::DType;

SequenceState::SequenceState(const KimiLinearConfig& config, kernels::Backend& backend,
                             int64_t layer_begin, int64_t layer_end, uint64_t model_fingerprint)
    : config_(config),
      backend_(backend),
      layer_begin_(layer_begin),
      layer_end_(layer_end),
      model_fingerprint_(model_fingerprint) {
  DS_CHECK(layer_begin >= 0 && layer_begin < layer_end && layer_end <= config.num_layers);
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
      state.mla.latent = backend.Allocate(0, config.mla_latent_size(), DType::kF32);
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
  const int64_t needed = state.num_cached + extra;
  if (needed <= state.latent.rows()) return;
  const int64_t capacity = std::max<int64_t>({needed, 2 * state.latent.rows(), 64});
  kernels::Tensor grown = backend_.Allocate(capacity, config_.mla_latent_size(), DType::kF32);
  if (grown.empty()) return;  // the backend failed (out of memory); the step reports it
  if (state.num_cached > 0) {
    backend_.Copy(state.latent.view().Rows(0, state.num_cached), grown.view().Rows(0, state.num_cached));
  }
  state.latent = std::move(grown);
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
      const int64_t rows = latent_at_capacity ? state.mla.latent.rows() : state.mla.num_cached;
      bytes += rows * config_.mla_latent_size() * 4;
    }
  }
  return bytes;
}

}  // namespace deltaserve::model
