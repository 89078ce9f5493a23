#include "model/state/state_codec.h"

#include <algorithm>
#include <bit>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "model/state/byte_io.h"
#include "model/state/state_envelope_internal.h"

namespace deltaserve::model {

std::string EncodeState(const SequenceState& state) {
  std::string bytes = EncodeStateUnsealed(state);
  SealState(bytes);
  return bytes;
}

void SealState(std::string& unsealed) {
  ByteWriter trailer;
  trailer.Put<uint32_t>(StateChecksum(unsealed));
  unsealed += trailer.out();
}

std::string EncodeStateUnsealed(const SequenceState& state) {
  const KimiLinearConfig& config = state.config();
  kernels::Backend& backend = state.backend();
  // Every tensor in snapshot order, each MLA layer's row count before its rows (a page's share
  // at a time). Every tensor is F32 in the snapshot, latent rows of other dtypes widened.
  const auto visit = [&](auto&& tensor, auto&& mla_rows, auto&& latent_rows) {
    for (int64_t layer = state.layer_begin(); layer < state.layer_end(); ++layer) {
      if (config.IsKda(layer)) {
        const KdaLayerState& kda = state.kda(layer);
        tensor(kda.recurrent.view());
        for (const kernels::Tensor& tail : kda.conv_tails) tensor(tail.view());
      } else {
        const MlaLayerState& mla = state.mla(layer);
        mla_rows(mla.num_cached);
        mla.ForEachRange(0, mla.num_cached, [&](int64_t first, int64_t n, kernels::TensorView page) {
          latent_rows(page, first, n);
        });
      }
    }
  };
  const auto tensor_bytes = [](kernels::TensorView view) { return static_cast<size_t>(view.numel()) * sizeof(float); };
  const auto rows_bytes = [](kernels::TensorView page, int64_t n) {
    return static_cast<size_t>(n * page.cols) * sizeof(float);
  };
  // The whole snapshot reserved at once (the seal's trailer too): no reallocation of gigabytes.
  size_t total = kStateHeaderBytes + state.tokens().size() * sizeof(int32_t) + kStateTrailerBytes;
  visit([&](kernels::TensorView view) { total += tensor_bytes(view); }, [&](int64_t) { total += sizeof(uint64_t); },
        [&](kernels::TensorView page, int64_t, int64_t n) { total += rows_bytes(page, n); });
  ByteWriter writer;
  writer.out().reserve(total);
  writer.PutBytes(kStateMagic, sizeof(kStateMagic));
  writer.Put<uint32_t>(kStateFormatVersion);
  writer.Put<uint32_t>(0);
  writer.Put<uint64_t>(state.model_fingerprint());
  writer.Put<uint32_t>(static_cast<uint32_t>(state.layer_begin()));
  writer.Put<uint32_t>(static_cast<uint32_t>(state.layer_end()));
  writer.Put<uint64_t>(static_cast<uint64_t>(state.num_tokens()));
  writer.PutBytes(state.tokens().data(), state.tokens().size() * sizeof(int32_t));
  // Straight into the snapshot (its bytes are the host's floats, every item before them whole
  // 4-byte words).
  static_assert(kStateHeaderBytes % sizeof(float) == 0);
  const auto append = [&](size_t bytes) {
    std::string& out = writer.out();
    out.resize(out.size() + bytes);
    return reinterpret_cast<float*>(out.data() + out.size() - bytes);
  };
  visit([&](kernels::TensorView view) { backend.Download(view, append(tensor_bytes(view))); },
        [&](int64_t rows) { writer.Put<uint64_t>(static_cast<uint64_t>(rows)); },
        [&](kernels::TensorView page, int64_t first, int64_t n) {
          DownloadLatentRows(backend, page, first, n, append(rows_bytes(page, n)));
        });
  return std::move(writer.out());
}

absl::StatusOr<std::unique_ptr<SequenceState>> DecodeState(std::string_view bytes,
                                                          const KimiLinearConfig& config,
                                                          kernels::Backend& backend,
                                                          uint64_t expected_fingerprint,
                                                          int64_t layer_begin, int64_t layer_end,
                                                          bool checksum_verified) {
  ByteReader reader(bytes);
  DS_ASSIGN_OR_RETURN(StateEnvelope envelope, ReadStateHeader(bytes, reader, !checksum_verified));
  if (envelope.model_fingerprint != expected_fingerprint) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "state snapshot belongs to another model (fingerprint %016x, this model is %016x)",
        envelope.model_fingerprint, expected_fingerprint));
  }
  if (envelope.layer_begin != layer_begin || envelope.layer_end != layer_end) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state snapshot covers layers [", envelope.layer_begin, ", ", envelope.layer_end,
        "), expected [", layer_begin, ", ", layer_end, ")"));
  }
  auto state = std::make_unique<SequenceState>(config, backend, layer_begin, layer_end,
                                               expected_fingerprint);
  std::vector<int32_t> tokens(static_cast<size_t>(envelope.num_tokens));
  DS_RETURN_IF_ERROR(reader.GetBytes(tokens.data(), tokens.size() * sizeof(int32_t), "tokens"));
  for (int32_t token : tokens) {
    if (token < 0 || token >= config.vocab_size) {
      return absl::DataLossError(absl::StrCat("state snapshot holds token id ", token,
                                              " outside the vocabulary"));
    }
  }
  state->AppendTokens(tokens);

  std::vector<float> host;
  auto get_tensor = [&](kernels::TensorView view, const char* what) -> absl::Status {
    host.resize(static_cast<size_t>(view.numel()));
    DS_RETURN_IF_ERROR(reader.GetBytes(host.data(), host.size() * sizeof(float), what));
    backend.Upload(host.data(), view);
    return absl::OkStatus();
  };
  // Cache rows [first, first + n) of `page` (latent pages of other dtypes than F32 are narrowed
  // and placed as they keep them).
  auto get_latent_rows = [&](kernels::TensorView page, int64_t first, int64_t n) -> absl::Status {
    host.resize(static_cast<size_t>(n * page.cols));
    DS_RETURN_IF_ERROR(reader.GetBytes(host.data(), host.size() * sizeof(float), "an MLA cache"));
    UploadLatentRows(backend, host.data(), page, first, n);
    return absl::OkStatus();
  };
  for (int64_t layer = layer_begin; layer < layer_end; ++layer) {
    if (config.IsKda(layer)) {
      KdaLayerState& kda = state->kda(layer);
      DS_RETURN_IF_ERROR(get_tensor(kda.recurrent.view(), "a KDA state"));
      for (kernels::Tensor& tail : kda.conv_tails) DS_RETURN_IF_ERROR(get_tensor(tail.view(), "a conv tail"));
    } else {
      uint64_t rows;
      DS_RETURN_IF_ERROR(reader.Get(&rows, "an MLA cache length"));
      if (rows != static_cast<uint64_t>(envelope.num_tokens)) {
        return absl::DataLossError(absl::StrCat("state snapshot's MLA layer ", layer, " caches ",
                                                rows, " tokens, its history has ",
                                                envelope.num_tokens));
      }
      state->ReserveLatent(layer, static_cast<int64_t>(rows));
      MlaLayerState& mla = state->mla(layer);
      if (mla.capacity() < static_cast<int64_t>(rows)) {
        return absl::ResourceExhaustedError(absl::StrCat("no memory for MLA layer ", layer, "'s cache of ",
                                                         rows, " rows"));
      }
      absl::Status status;
      mla.ForEachRange(0, static_cast<int64_t>(rows), [&](int64_t first, int64_t n, kernels::TensorView page) {
        if (status.ok()) status = get_latent_rows(page, first, n);
      });
      DS_RETURN_IF_ERROR(status);
      mla.num_cached = static_cast<int64_t>(rows);
    }
  }
  if (reader.remaining() != kStateTrailerBytes) {
    return absl::DataLossError(absl::StrCat("state snapshot payload is ", reader.remaining(),
                                            " bytes away from its checksum; expected exactly ",
                                            kStateTrailerBytes, " bytes (the checksum) to remain"));
  }
  return state;
}

}  // namespace deltaserve::model
