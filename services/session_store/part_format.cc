// Encoding and checked decoding of part file headers and session metadata files.
#include "services/session_store/part_format.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"

namespace deltaserve::services {
namespace {

constexpr char kPartMagic[8] = {'D', 'S', 'P', 'A', 'R', 'T', '0', '1'};
constexpr char kSessionMagic[8] = {'D', 'S', 'S', 'E', 'S', 'S', '0', '1'};
constexpr size_t kSessionMetaFixedBytes = 36;

// Little-endian, whatever the host's byte order.
class LeWriter {
 public:
  template <typename T>
  void Put(T value) {
    auto u = static_cast<std::make_unsigned_t<T>>(value);
    for (size_t i = 0; i < sizeof(T); ++i) out_.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
  }
  void PutBytes(std::string_view bytes) { out_.append(bytes.data(), bytes.size()); }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class LeReader {
 public:
  LeReader(std::string_view bytes, const char* what) : bytes_(bytes), what_(what) {}
  template <typename T>
  absl::Status Get(T* value) {
    DS_RETURN_IF_ERROR(Need(sizeof(T)));
    std::make_unsigned_t<T> u = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      u |= static_cast<std::make_unsigned_t<T>>(static_cast<unsigned char>(bytes_[offset_ + i]))
           << (8 * i);
    }
    offset_ += sizeof(T);
    *value = static_cast<T>(u);
    return absl::OkStatus();
  }
  absl::Status GetString(size_t n, std::string* value) {
    DS_RETURN_IF_ERROR(Need(n));
    value->assign(bytes_.data() + offset_, n);
    offset_ += n;
    return absl::OkStatus();
  }
  absl::Status Skip(size_t n) {
    DS_RETURN_IF_ERROR(Need(n));
    offset_ += n;
    return absl::OkStatus();
  }
  size_t offset() const { return offset_; }

 private:
  absl::Status Need(size_t n) const {
    if (bytes_.size() - offset_ < n) {
      return absl::DataLossError(absl::StrCat(what_, " is truncated at byte ", offset_));
    }
    return absl::OkStatus();
  }
  std::string_view bytes_;
  const char* what_;
  size_t offset_ = 0;
};

absl::Status CheckMagicAndVersion(LeReader& reader, std::string_view bytes, const char* magic,
                                  const char* what) {
  if (bytes.size() < 12 || std::memcmp(bytes.data(), magic, 8) != 0) {
    return absl::DataLossError(absl::StrCat(what, " has a bad magic"));
  }
  DS_RETURN_IF_ERROR(reader.Skip(8));
  uint32_t version = 0;
  DS_RETURN_IF_ERROR(reader.Get(&version));
  if (version != kDiskFormatVersion) {
    return absl::DataLossError(absl::StrCat(what, " has format version ", version,
                                            "; this build reads version ", kDiskFormatVersion));
  }
  return absl::OkStatus();
}

absl::Status CheckCrc(std::string_view covered, uint32_t stored, const char* what) {
  const uint32_t actual = Crc32(covered);
  if (actual != stored) {
    return absl::DataLossError(
        absl::StrFormat("%s checksum mismatch: stored %08x, computed %08x", what, stored, actual));
  }
  return absl::OkStatus();
}

}  // namespace

uint32_t Crc32(std::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  constexpr size_t kPiece = size_t{1} << 30;  // zlib takes uInt lengths
  for (size_t offset = 0; offset < bytes.size(); offset += kPiece) {
    const size_t n = std::min(kPiece, bytes.size() - offset);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + offset), static_cast<uInt>(n));
  }
  return static_cast<uint32_t>(crc);
}

std::string EncodePartHeader(const PartHeader& header) {
  const size_t header_bytes = kPartHeaderFixedBytes + header.tenant.size() +
                              header.session_id.size() + header.part.size() + 4;
  LeWriter w;
  w.PutBytes(std::string_view(kPartMagic, sizeof(kPartMagic)));
  w.Put<uint32_t>(kDiskFormatVersion);
  w.Put<uint32_t>(static_cast<uint32_t>(header_bytes));
  w.Put<uint32_t>(static_cast<uint32_t>(header.kind));
  w.Put<uint32_t>(0);  // flags
  w.Put<uint64_t>(header.payload_bytes);
  w.Put<uint32_t>(header.payload_crc32);
  w.Put<uint32_t>(0);  // reserved
  w.Put<int64_t>(header.written_unix_ms);
  w.Put<int64_t>(header.num_tokens);
  w.Put<uint64_t>(header.model_fingerprint);
  w.Put<int64_t>(header.layer_begin);
  w.Put<int64_t>(header.layer_end);
  w.Put<uint16_t>(static_cast<uint16_t>(header.tenant.size()));
  w.Put<uint16_t>(static_cast<uint16_t>(header.session_id.size()));
  w.Put<uint16_t>(static_cast<uint16_t>(header.part.size()));
  w.Put<uint16_t>(0);  // reserved
  w.PutBytes(header.tenant);
  w.PutBytes(header.session_id);
  w.PutBytes(header.part);
  w.Put<uint32_t>(Crc32(w.out()));
  return std::move(w.out());
}

absl::StatusOr<PartHeader> DecodePartHeader(std::string_view bytes, size_t* header_bytes) {
  constexpr const char* kWhat = "part file header";
  LeReader r(bytes, kWhat);
  DS_RETURN_IF_ERROR(CheckMagicAndVersion(r, bytes, kPartMagic, kWhat));
  uint32_t declared_bytes = 0, kind = 0, flags = 0, reserved32 = 0;
  uint16_t tenant_bytes = 0, session_bytes = 0, part_bytes = 0, reserved16 = 0;
  PartHeader header;
  DS_RETURN_IF_ERROR(r.Get(&declared_bytes));
  if (declared_bytes < kPartHeaderFixedBytes + 4 || declared_bytes > kMaxPartHeaderBytes) {
    return absl::DataLossError(absl::StrCat(kWhat, " declares ", declared_bytes, " bytes"));
  }
  if (bytes.size() < declared_bytes) {
    return absl::DataLossError(
        absl::StrCat(kWhat, " is truncated: ", bytes.size(), " of ", declared_bytes, " bytes"));
  }
  uint32_t stored_crc = 0;
  LeReader crc_reader(bytes.substr(declared_bytes - 4, 4), kWhat);
  DS_RETURN_IF_ERROR(crc_reader.Get(&stored_crc));
  DS_RETURN_IF_ERROR(CheckCrc(bytes.substr(0, declared_bytes - 4), stored_crc, kWhat));

  DS_RETURN_IF_ERROR(r.Get(&kind));
  DS_RETURN_IF_ERROR(r.Get(&flags));
  DS_RETURN_IF_ERROR(r.Get(&header.payload_bytes));
  DS_RETURN_IF_ERROR(r.Get(&header.payload_crc32));
  DS_RETURN_IF_ERROR(r.Get(&reserved32));
  DS_RETURN_IF_ERROR(r.Get(&header.written_unix_ms));
  DS_RETURN_IF_ERROR(r.Get(&header.num_tokens));
  DS_RETURN_IF_ERROR(r.Get(&header.model_fingerprint));
  DS_RETURN_IF_ERROR(r.Get(&header.layer_begin));
  DS_RETURN_IF_ERROR(r.Get(&header.layer_end));
  DS_RETURN_IF_ERROR(r.Get(&tenant_bytes));
  DS_RETURN_IF_ERROR(r.Get(&session_bytes));
  DS_RETURN_IF_ERROR(r.Get(&part_bytes));
  DS_RETURN_IF_ERROR(r.Get(&reserved16));
  if (kind != static_cast<uint32_t>(PartKind::kState) &&
      kind != static_cast<uint32_t>(PartKind::kBlob)) {
    return absl::DataLossError(absl::StrCat(kWhat, " has unknown kind ", kind));
  }
  if (flags != 0) return absl::DataLossError(absl::StrCat(kWhat, " has unknown flags ", flags));
  header.kind = static_cast<PartKind>(kind);
  if (kPartHeaderFixedBytes + size_t{tenant_bytes} + session_bytes + part_bytes + 4 !=
      declared_bytes) {
    return absl::DataLossError(absl::StrCat(kWhat, " name lengths disagree with its size"));
  }
  DS_RETURN_IF_ERROR(r.GetString(tenant_bytes, &header.tenant));
  DS_RETURN_IF_ERROR(r.GetString(session_bytes, &header.session_id));
  DS_RETURN_IF_ERROR(r.GetString(part_bytes, &header.part));
  if (header.payload_bytes > static_cast<uint64_t>(INT64_MAX)) {
    return absl::DataLossError(absl::StrCat(kWhat, " declares an impossible payload size"));
  }
  *header_bytes = declared_bytes;
  return header;
}

std::string EncodeSessionMeta(const SessionMeta& meta) {
  LeWriter w;
  w.PutBytes(std::string_view(kSessionMagic, sizeof(kSessionMagic)));
  w.Put<uint32_t>(kDiskFormatVersion);
  w.Put<uint32_t>(0);  // flags
  w.Put<int64_t>(meta.created_unix_ms);
  w.Put<int64_t>(meta.last_used_unix_ms);
  w.Put<uint16_t>(static_cast<uint16_t>(meta.tenant.size()));
  w.Put<uint16_t>(static_cast<uint16_t>(meta.session_id.size()));
  w.PutBytes(meta.tenant);
  w.PutBytes(meta.session_id);
  w.Put<uint32_t>(Crc32(w.out()));
  return std::move(w.out());
}

absl::StatusOr<SessionMeta> DecodeSessionMeta(std::string_view bytes) {
  constexpr const char* kWhat = "session metadata";
  LeReader r(bytes, kWhat);
  DS_RETURN_IF_ERROR(CheckMagicAndVersion(r, bytes, kSessionMagic, kWhat));
  if (bytes.size() < kSessionMetaFixedBytes + 4) {
    return absl::DataLossError(absl::StrCat(kWhat, " is truncated"));
  }
  uint32_t stored_crc = 0;
  LeReader crc_reader(bytes.substr(bytes.size() - 4), kWhat);
  DS_RETURN_IF_ERROR(crc_reader.Get(&stored_crc));
  DS_RETURN_IF_ERROR(CheckCrc(bytes.substr(0, bytes.size() - 4), stored_crc, kWhat));
  SessionMeta meta;
  uint32_t flags = 0;
  uint16_t tenant_bytes = 0, session_bytes = 0;
  DS_RETURN_IF_ERROR(r.Get(&flags));
  DS_RETURN_IF_ERROR(r.Get(&meta.created_unix_ms));
  DS_RETURN_IF_ERROR(r.Get(&meta.last_used_unix_ms));
  DS_RETURN_IF_ERROR(r.Get(&tenant_bytes));
  DS_RETURN_IF_ERROR(r.Get(&session_bytes));
  if (flags != 0) return absl::DataLossError(absl::StrCat(kWhat, " has unknown flags ", flags));
  if (kSessionMetaFixedBytes + size_t{tenant_bytes} + session_bytes + 4 != bytes.size()) {
    return absl::DataLossError(absl::StrCat(kWhat, " name lengths disagree with its size"));
  }
  DS_RETURN_IF_ERROR(r.GetString(tenant_bytes, &meta.tenant));
  DS_RETURN_IF_ERROR(r.GetString(session_bytes, &meta.session_id));
  return meta;
}

}  // namespace deltaserve::services
