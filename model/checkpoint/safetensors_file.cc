// Maps a .safetensors file and validates its header before any tensor byte is handed out:
// every length, offset and size is checked against the mapping (spec §6).
#include "model/checkpoint/safetensors_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/checkpoint/errno_status.h"
#include "nlohmann/json.hpp"

namespace deltaserve::model {
namespace {

using kernels::DType;
using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::Status BadTensor(const std::string& path, const std::string& name, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' ", what));
}

absl::StatusOr<DType> ParseDType(const std::string& path, const std::string& name,
                                 const json& value) {
  if (!value.is_string()) return BadTensor(path, name, "has a non-string dtype");
  const std::string& text = value.get_ref<const std::string&>();
  if (text == "F32") return DType::kF32;
  if (text == "BF16") return DType::kBF16;
  if (text == "F16") return DType::kF16;
  return BadTensor(path, name,
                   absl::StrCat("has unsupported dtype ", text, " (supported: F32, BF16, F16)"));
}

// Reads a JSON number that must be a non-negative integer fitting in int64.
bool AsNonNegativeInt(const json& value, uint64_t& out) {
  if (value.is_number_unsigned()) {
    out = value.get<uint64_t>();
    return out <= static_cast<uint64_t>(INT64_MAX);
  }
  if (value.is_number_integer()) {
    const int64_t signed_value = value.get<int64_t>();
    if (signed_value < 0) return false;
    out = static_cast<uint64_t>(signed_value);
    return true;
  }
  return false;
}

struct Range {
  uint64_t begin;
  uint64_t end;
  const std::string* name;
};

absl::Status ReadEntries(const std::string& path, const json& header, const unsigned char* data,
                         uint64_t data_size, std::map<std::string, TensorEntry>& tensors,
                         std::map<std::string, std::string>& metadata) {
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return Bad(path, "__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return Bad(path, absl::StrCat("__metadata__ value '", key, "' is not a string"));
        }
        metadata[key] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) return BadTensor(path, name, "entry is not an object");
    const auto dtype_it = entry.find("dtype");
    const auto shape_it = entry.find("shape");
    const auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end()) return BadTensor(path, name, "has no dtype");
    if (shape_it == entry.end()) return BadTensor(path, name, "has no shape");
    if (offsets_it == entry.end()) return BadTensor(path, name, "has no data_offsets");

    TensorEntry tensor;
    tensor.name = name;
    DS_ASSIGN_OR_RETURN(tensor.dtype, ParseDType(path, name, *dtype_it));

    if (!shape_it->is_array()) return BadTensor(path, name, "shape is not an array");
    uint64_t num_elements = 1;
    for (const json& dim_value : *shape_it) {
      uint64_t dim = 0;
      if (!AsNonNegativeInt(dim_value, dim)) {
        return BadTensor(path, name, absl::StrCat("has shape ", shape_it->dump(),
                                                  "; dimensions must be non-negative integers"));
      }
      if (__builtin_mul_overflow(num_elements, dim, &num_elements)) {
        return BadTensor(path, name, absl::StrCat("shape ", shape_it->dump(), " overflows"));
      }
      tensor.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t expected_bytes = 0;
    if (__builtin_mul_overflow(num_elements, uint64_t{kernels::DTypeSize(tensor.dtype)},
                               &expected_bytes)) {
      return BadTensor(path, name, absl::StrCat("shape ", shape_it->dump(), " overflows"));
    }

    uint64_t begin = 0;
    uint64_t end = 0;
    if (!offsets_it->is_array() || offsets_it->size() != 2 ||
        !AsNonNegativeInt((*offsets_it)[0], begin) || !AsNonNegativeInt((*offsets_it)[1], end)) {
      return BadTensor(path, name, absl::StrCat("data_offsets ", offsets_it->dump(),
                                                " is not a pair of non-negative integers"));
    }
    if (begin > end || end > data_size) {
      return BadTensor(path, name, absl::StrCat("data_offsets [", begin, ", ", end,
                                                "] lie outside the ", data_size,
                                                "-byte data area"));
    }
    if (end - begin != expected_bytes) {
      return BadTensor(path, name,
                       absl::StrCat("holds ", end - begin, " bytes but dtype ",
                                    kernels::DTypeName(tensor.dtype), " x shape ",
                                    shape_it->dump(), " needs ", expected_bytes));
    }
    tensor.data = data + begin;
    tensor.num_bytes = expected_bytes;
    auto [it, inserted] = tensors.emplace(name, std::move(tensor));
    ranges.push_back({begin, end, &it->first});
  }

  // Empty ranges cannot overlap anything; the rest, sorted by start, must not interleave.
  std::erase_if(ranges, [](const Range& r) { return r.begin == r.end; });
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return BadTensor(path, *ranges[i].name,
                       absl::StrCat("bytes [", ranges[i].begin, ", ", ranges[i].end,
                                    ") overlap tensor '", *ranges[i - 1].name, "' bytes [",
                                    ranges[i - 1].begin, ", ", ranges[i - 1].end, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Bad(path, "not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return Bad(path, absl::StrCat("file is ", file_size,
                                  " bytes, too short for the 8-byte header length"));
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) return ErrnoToStatus(map_errno, absl::StrCat(path, ": cannot mmap"));

  // From here the destructor unmaps on every error path.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->mapping_size_ = file_size;
  const auto* bytes = static_cast<const unsigned char*>(mapping);

  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxHeaderBytes) {
    return Bad(path, absl::StrCat("header length ", header_size, " exceeds the limit of ",
                                  kMaxHeaderBytes, " bytes"));
  }
  if (header_size > file_size - 8) {
    return Bad(path, absl::StrCat("header length ", header_size, " runs past the end of the ",
                                  file_size, "-byte file"));
  }
  const uint64_t data_size = file_size - 8 - header_size;
  const unsigned char* data = bytes + 8 + header_size;

  // nlohmann keeps the last of duplicate keys; catch top-level duplicates, which would let two
  // entries describe one name.
  std::set<std::string> seen_keys;
  std::string duplicate_key;
  const json::parser_callback_t on_event = [&](int depth, json::parse_event_t event,
                                               json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && parsed.is_string()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!seen_keys.insert(key).second && duplicate_key.empty()) duplicate_key = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_size, on_event);
  } catch (const json::exception& e) {
    return Bad(path, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) return Bad(path, "header JSON is not an object");
  if (!duplicate_key.empty()) return BadTensor(path, duplicate_key, "appears twice in the header");
  try {
    DS_RETURN_IF_ERROR(ReadEntries(path, header, data, data_size, file->tensors_, file->metadata_));
  } catch (const json::exception& e) {
    return Bad(path, absl::StrCat("malformed header: ", e.what()));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

}  // namespace deltaserve::model
