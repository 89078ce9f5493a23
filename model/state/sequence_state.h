// Everything a sequence carries between steps (spec §2.6, §3.3): per KDA layer the recurrent state
// and the conv tails, per MLA layer the latent cache, plus the tokens processed so far. Continuing
// from a state equals processing the concatenation in one pass.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {

struct KdaLayerState {
  kernels::Tensor recurrent;                  // [H, d*d] F32: head h's [d_k, d_v] block in row h
  std::array<kernels::Tensor, 3> conv_tails;  // q, k, v: [W-1, H*d] F32, oldest input first
};

// Rows per page of the MLA latent caches unless a SequenceState is given another size.
inline constexpr int64_t kDefaultLatentPageRows = 256;

// An MLA layer's latent cache, in pages allocated as it grows (never moved or copied).
struct MlaLayerState {
  std::vector<kernels::Tensor> pages;  // each [page_rows, R + dr] of dtype, placed as kernels::LatentOffset says
  std::vector<void*> page_data;        // pages[i].data(), what kernels::LatentPages points at
  int64_t page_rows = 0;
  kernels::DType dtype = kernels::DType::kF32;  // the backend's LatentCacheDType
  int64_t num_cached = 0;  // rows [0, num_cached) are valid

  int64_t capacity() const { return static_cast<int64_t>(pages.size()) * page_rows; }
  kernels::LatentPages view() const { return {page_data.data(), page_rows, dtype}; }
  // Calls fn(first_row, n, page) with `page` a view of the whole page that holds cache rows
  // [first_row, first_row + n), for each page's share of rows [first, first + count) (within
  // capacity).
  template <typename Fn>
  void ForEachRange(int64_t first, int64_t count, Fn fn) const {
    for (int64_t row = first; row < first + count;) {
      const int64_t in_page = row % page_rows, n = std::min(page_rows - in_page, first + count - row);
      fn(row, n, pages[static_cast<size_t>(row / page_rows)].view());
      row += n;
    }
  }
};

// Latent cache rows [first_row, first_row + n) of one page ([page_rows, width], as
// MlaLayerState::ForEachRange gives them) to and from F32 on the host ([n, width]), converted and
// placed where the pages hold another dtype and order (kernels::LatentOffset): snapshots and
// synthetic histories are F32 rows whatever the backend keeps. A BF16 page is written whole: a
// range that starts inside a page reads the page first and keeps its other rows; a range that
// starts a page reads nothing and leaves the rows after it zero (caches fill in order).
void UploadLatentRows(kernels::Backend& backend, const float* host, kernels::TensorView page, int64_t first_row,
                      int64_t n);
void DownloadLatentRows(kernels::Backend& backend, kernels::TensorView page, int64_t first_row, int64_t n,
                        float* host);

class SequenceState {
 public:
  // A fresh (zero) state for layers [layer_begin, layer_end) of a model with `config`; MLA
  // latent caches in pages of `latent_page_rows` rows (> 0).
  // leave_step_room: Backend::AllocateState's, for the KDA states.
  SequenceState(const KimiLinearConfig& config, kernels::Backend& backend, int64_t layer_begin,
                int64_t layer_end, uint64_t model_fingerprint,
                int64_t latent_page_rows = kDefaultLatentPageRows, bool leave_step_room = true);
  ~SequenceState();
  SequenceState(const SequenceState&) = delete;
  SequenceState& operator=(const SequenceState&) = delete;
  // Counts this state in `live` (its model's states alive) until it is destroyed.
  void CountIn(std::shared_ptr<std::atomic<int64_t>> live);

  uint64_t model_fingerprint() const { return model_fingerprint_; }
  int64_t layer_begin() const { return layer_begin_; }
  int64_t layer_end() const { return layer_end_; }
  const KimiLinearConfig& config() const { return config_; }
  kernels::Backend& backend() const { return backend_; }

  // Tokens processed so far (the history the state summarises).
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  void AppendTokens(std::span<const int32_t> tokens);

  KdaLayerState& kda(int64_t layer);
  const KdaLayerState& kda(int64_t layer) const;
  MlaLayerState& mla(int64_t layer);
  const MlaLayerState& mla(int64_t layer) const;

  // Makes room for `extra` more latent rows in MLA layer `layer`: the pages they need, allocated
  // now (where the backend fails, fewer: the step that needs them reports it). leave_step_room:
  // Backend::AllocateState's.
  void ReserveLatent(int64_t layer, int64_t extra, bool leave_step_room = true);
  // Bytes held: fixed KDA state plus the latent rows in use.
  int64_t ByteSize() const;
  // Bytes allocated: as ByteSize, but every latent cache's whole pages.
  int64_t AllocatedByteSize() const;

 private:
  struct LayerState {
    KdaLayerState kda;
    MlaLayerState mla;
  };

  int64_t Bytes(bool latent_at_capacity) const;

  KimiLinearConfig config_;
  kernels::Backend& backend_;
  int64_t layer_begin_;
  int64_t layer_end_;
  uint64_t model_fingerprint_;
  std::vector<int32_t> tokens_;
  std::vector<LayerState> layers_;  // layers_[i] is layer layer_begin_ + i
  std::shared_ptr<std::atomic<int64_t>> live_;  // CountIn's
};

}  // namespace deltaserve::model
