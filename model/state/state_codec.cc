#include "model/state/state_codec.h"

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"

namespace deltaserve::model {
namespace {

constexpr char kMagic[8] = {'D', 'S', 'S', 'T', 'A', 'T', 'E', '1'};
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8 + 4 + 4 + 8;
constexpr size_t kTrailerBytes = 4;

uint32_t Crc32(std::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes uInt lengths; feed large snapshots in pieces.
  constexpr size_t kPiece = 1u << 30;
  for (size_t offset = 0; offset < bytes.size(); offset += kPiece) {
    const size_t n = std::min(kPiece, bytes.size() - offset);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + offset), static_cast<uInt>(n));
  }
  return static_cast<uint32_t>(crc);
}

class Writer {
 public:
  template <typename T>
  void Put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    char raw[sizeof(T)];
    std::memcpy(raw, &value, sizeof(T));  // the host is little-endian (checked at build time)
    out_.append(raw, sizeof(T));
  }
  void PutBytes(const void* data, size_t n) {
    if (n > 0) out_.append(static_cast<const char*>(data), n);
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  template <typename T>
  absl::Status Get(T* value, const char* what) {
    DS_RETURN_IF_ERROR(Need(sizeof(T), what));
    std::memcpy(value, bytes_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    return absl::OkStatus();
  }
  absl::Status GetBytes(void* data, size_t n, const char* what) {
    DS_RETURN_IF_ERROR(Need(n, what));
    if (n == 0) return absl::OkStatus();  // data may be null for an empty vector
    std::memcpy(data, bytes_.data() + offset_, n);
    offset_ += n;
    return absl::OkStatus();
  }
  size_t remaining() const { return bytes_.size() - offset_; }

 private:
  absl::Status Need(size_t n, const char* what) const {
    if (bytes_.size() - offset_ < n) {
      return absl::DataLossError(absl::StrCat("state snapshot is truncated in ", what));
    }
    return absl::OkStatus();
  }
  std::string_view bytes_;
  size_t offset_ = 0;
};

static_assert(std::endian::native == std::endian::little, "the snapshot format is little-endian");

// Reads the header after verifying magic, version and checksum; leaves `reader` at the tokens.
absl::StatusOr<StateEnvelope> ReadHeader(std::string_view bytes, Reader& reader) {
  if (bytes.size() < kHeaderBytes + kTrailerBytes) {
    return absl::DataLossError(absl::StrCat("state snapshot of ", bytes.size(),
                                            " bytes is shorter than its fixed header"));
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError("not a deltaserve state snapshot (bad magic)");
  }
  StateEnvelope envelope;
  char magic[8];
  uint32_t flags, layer_begin, layer_end;
  uint64_t num_tokens;
  DS_RETURN_IF_ERROR(reader.GetBytes(magic, sizeof(magic), "magic"));
  DS_RETURN_IF_ERROR(reader.Get(&envelope.format_version, "version"));
  if (envelope.format_version != kStateFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state snapshot has format version ", envelope.format_version, "; this build reads version ",
        kStateFormatVersion));
  }
  uint32_t stored_crc;
  std::memcpy(&stored_crc, bytes.data() + bytes.size() - kTrailerBytes, sizeof(stored_crc));
  const uint32_t actual_crc = Crc32(bytes.substr(0, bytes.size() - kTrailerBytes));
  if (stored_crc != actual_crc) {
    return absl::DataLossError(absl::StrFormat(
        "state snapshot is corrupt: checksum %08x, expected %08x", actual_crc, stored_crc));
  }
  DS_RETURN_IF_ERROR(reader.Get(&flags, "flags"));
  DS_RETURN_IF_ERROR(reader.Get(&envelope.model_fingerprint, "fingerprint"));
  DS_RETURN_IF_ERROR(reader.Get(&layer_begin, "layer range"));
  DS_RETURN_IF_ERROR(reader.Get(&layer_end, "layer range"));
  DS_RETURN_IF_ERROR(reader.Get(&num_tokens, "token count"));
  if (flags != 0) return absl::DataLossError(absl::StrCat("state snapshot has unknown flags ", flags));
  envelope.layer_begin = layer_begin;
  envelope.layer_end = layer_end;
  if (num_tokens > (bytes.size() - kHeaderBytes) / sizeof(int32_t)) {
    return absl::DataLossError(absl::StrCat("state snapshot claims ", num_tokens,
                                            " tokens, more than its size can hold"));
  }
  envelope.num_tokens = static_cast<int64_t>(num_tokens);
  return envelope;
}

}  // namespace

std::string EncodeState(const SequenceState& state) {
  const KimiLinearConfig& config = state.config();
  kernels::Backend& backend = state.backend();
  Writer writer;
  writer.PutBytes(kMagic, sizeof(kMagic));
  writer.Put<uint32_t>(kStateFormatVersion);
  writer.Put<uint32_t>(0);
  writer.Put<uint64_t>(state.model_fingerprint());
  writer.Put<uint32_t>(static_cast<uint32_t>(state.layer_begin()));
  writer.Put<uint32_t>(static_cast<uint32_t>(state.layer_end()));
  writer.Put<uint64_t>(static_cast<uint64_t>(state.num_tokens()));
  writer.PutBytes(state.tokens().data(), state.tokens().size() * sizeof(int32_t));
  std::vector<float> host;
  auto put_tensor = [&](kernels::TensorView view) {
    host.resize(static_cast<size_t>(view.numel()));
    backend.Download(view, host.data());
    writer.PutBytes(host.data(), host.size() * sizeof(float));
  };
  for (int64_t layer = state.layer_begin(); layer < state.layer_end(); ++layer) {
    if (config.IsKda(layer)) {
      const KdaLayerState& kda = state.kda(layer);
      put_tensor(kda.recurrent.view());
      for (const kernels::Tensor& tail : kda.conv_tails) put_tensor(tail.view());
    } else {
      const MlaLayerState& mla = state.mla(layer);
      writer.Put<uint64_t>(static_cast<uint64_t>(mla.num_cached));
      put_tensor(mla.latent.view().Rows(0, mla.num_cached));
    }
  }
  writer.Put<uint32_t>(Crc32(writer.out()));
  return std::move(writer.out());
}

absl::StatusOr<StateEnvelope> ReadStateEnvelope(std::string_view bytes) {
  Reader reader(bytes);
  return ReadHeader(bytes, reader);
}

absl::StatusOr<std::unique_ptr<SequenceState>> DecodeState(std::string_view bytes,
                                                          const KimiLinearConfig& config,
                                                          kernels::Backend& backend,
                                                          uint64_t expected_fingerprint,
                                                          int64_t layer_begin, int64_t layer_end) {
  Reader reader(bytes);
  DS_ASSIGN_OR_RETURN(StateEnvelope envelope, ReadHeader(bytes, reader));
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
      DS_RETURN_IF_ERROR(get_tensor(mla.latent.view().Rows(0, static_cast<int64_t>(rows)), "an MLA cache"));
      mla.num_cached = static_cast<int64_t>(rows);
    }
  }
  if (reader.remaining() != kTrailerBytes) {
    return absl::DataLossError(absl::StrCat("state snapshot payload is ", reader.remaining(),
                                            " bytes away from its checksum; expected exactly ",
                                            kTrailerBytes, " bytes (the checksum) to remain"));
  }
  return state;
}

}  // namespace deltaserve::model
