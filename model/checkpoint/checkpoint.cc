// Opens a checkpoint directory (config, index, shards) or a random source and hands out tensors
// by name and shape, keeping track of which ones the loader claimed.
#include "model/checkpoint/checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "model/config/model_source.h"
#include "model/config/presets.h"
#include "nlohmann/json.hpp"

namespace deltaserve::model {
namespace {

using json = nlohmann::json;

constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleFileName[] = "model.safetensors";

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return std::move(text).str();
}

// Shard names come from a file we do not control: they must stay inside the directory.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

// Reads the index's weight_map: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(const std::string& index_path) {
  DS_ASSIGN_OR_RETURN(const std::string text, ReadSmallFile(index_path));
  json index;
  try {
    index = json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON: ", e.what()));
  }
  if (!index.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object"));
  }
  const auto weight_map = index.find("weight_map");
  if (weight_map == index.end() || !weight_map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": has no \"weight_map\" object"));
  }
  std::map<std::string, std::string> result;
  for (const auto& [name, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor '", name,
                                                     "' maps to a non-string shard name"));
    }
    const std::string& shard_name = shard.get_ref<const std::string&>();
    if (!IsPlainFileName(shard_name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor '", name, "' maps to shard '", shard_name,
                       "', which is not a plain file name inside the directory"));
    }
    result.emplace(name, shard_name);
  }
  return result;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& source) {
  DS_ASSIGN_OR_RETURN(const std::optional<RandomModelSource> random,
                      ParseRandomModelSource(source));
  if (!random.has_value()) return OpenDirectory(source);
  DS_ASSIGN_OR_RETURN(const KimiLinearConfig config, PresetConfig(random->preset));
  return OpenRandom(config, random->seed, source);
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::OpenRandom(const KimiLinearConfig& config,
                                                                   uint64_t seed,
                                                                   std::string name) {
  if (const absl::Status valid = config.Validate(); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", valid.message()));
  }
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  checkpoint->dir_ = std::move(name);
  checkpoint->config_ = config;
  checkpoint->generated_ = std::make_unique<GeneratedTensors>(config, seed);
  for (const auto& [tensor_name, entry] : checkpoint->generated_->entries()) {
    checkpoint->tensors_.emplace(tensor_name, CheckpointTensor{&entry, &checkpoint->dir_});
  }
  return checkpoint;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::OpenDirectory(const std::string& dir) {
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  checkpoint->dir_ = dir;
  DS_ASSIGN_OR_RETURN(checkpoint->config_, LoadKimiLinearConfig(dir + "/config.json"));

  const std::string index_path = absl::StrCat(dir, "/", kIndexName);
  const std::string single_path = absl::StrCat(dir, "/", kSingleFileName);
  if (IsRegularFile(index_path)) {
    DS_ASSIGN_OR_RETURN(const auto weight_map, ReadWeightMap(index_path));
    std::map<std::string, std::vector<std::string>> names_by_shard;
    for (const auto& [name, shard] : weight_map) names_by_shard[shard].push_back(name);

    for (const auto& [shard, names] : names_by_shard) {
      const std::string shard_path = absl::StrCat(dir, "/", shard);
      auto file = SafetensorsFile::Open(shard_path);
      if (!file.ok()) {
        return absl::Status(file.status().code(),
                            absl::StrCat(index_path, " lists shard '", shard, "' for ",
                                         names.size(), " tensors (e.g. '", names.front(),
                                         "'), which fails to open: ", file.status().message()));
      }
      for (const std::string& name : names) {
        if (!(*file)->tensors().contains(name)) {
          return absl::InvalidArgumentError(absl::StrCat(
              shard_path, ": tensor '", name, "' is listed for this shard in ", index_path,
              " but the shard does not hold it"));
        }
      }
      for (const auto& [name, entry] : (*file)->tensors()) {
        const auto listed = weight_map.find(name);
        if (listed == weight_map.end()) {
          return absl::InvalidArgumentError(absl::StrCat(
              shard_path, ": holds tensor '", name, "', which ", index_path, " does not list"));
        }
        if (listed->second != shard) {
          return absl::InvalidArgumentError(
              absl::StrCat(shard_path, ": holds tensor '", name, "', which ", index_path,
                           " assigns to shard '", listed->second, "'"));
        }
      }
      checkpoint->files_.push_back(*std::move(file));
    }
  } else if (IsRegularFile(single_path)) {
    DS_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path));
    checkpoint->files_.push_back(std::move(file));
  } else {
    return absl::NotFoundError(absl::StrCat(dir, ": neither ", kIndexName, " nor ",
                                            kSingleFileName, " exists"));
  }

  for (const auto& file : checkpoint->files_) {
    for (const auto& [name, entry] : file->tensors()) {
      const auto [it, inserted] =
          checkpoint->tensors_.emplace(name, CheckpointTensor{&entry, &file->path()});
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' appears in both ",
                                                       *it->second.file, " and ", file->path()));
      }
    }
  }
  return checkpoint;
}

bool Checkpoint::Has(const std::string& name) const { return tensors_.contains(name); }

absl::StatusOr<CheckpointTensor> Checkpoint::Get(const std::string& name,
                                                 const std::vector<int64_t>& shape) {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": tensor '", name,
                                            "' is missing (expected shape ", ShapeString(shape),
                                            ")"));
  }
  const TensorEntry& entry = *it->second.entry;
  if (entry.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(*it->second.file, ": tensor '", name,
                                                   "' has shape ", ShapeString(entry.shape),
                                                   ", expected ", ShapeString(shape)));
  }
  // SafetensorsFile and the random specs admit only F32, BF16 and F16: no dtype check here.
  if (generated_ != nullptr) DS_RETURN_IF_ERROR(generated_->Hold(name).status());
  claimed_.insert(name);
  return it->second;
}

void Checkpoint::Release(const std::string& name) {
  if (generated_ != nullptr) generated_->Release(name);
}

uint64_t Checkpoint::generated_bytes_held() const {
  return generated_ != nullptr ? generated_->held_bytes() : 0;
}

std::vector<std::string> Checkpoint::Unclaimed() const {
  std::vector<std::string> names;
  for (const auto& [name, tensor] : tensors_) {
    if (!claimed_.contains(name)) names.push_back(name);
  }
  return names;
}

uint64_t Checkpoint::ModelFingerprint() const {
  // Multiplying by an odd constant before mixing keeps a change in either digest visible.
  return ConfigFingerprint(config_) * 0x9e3779b97f4a7c15ull ^ WeightsFingerprint();
}

uint64_t Checkpoint::WeightsFingerprint() const {
  // FNV-1a 64 over metadata and four 64-byte samples per tensor: touches a few pages per tensor,
  // so it stays cheap on a 98 GB checkpoint. A generated tensor's samples are generated alone,
  // so the digest equals that of the same checkpoint written to disk.
  uint64_t hash = 0xcbf29ce484222325ull;
  const auto mix = [&hash](const void* data, size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) {
      hash ^= bytes[i];
      hash *= 0x100000001b3ull;
    }
  };
  const auto mix_u64 = [&mix](uint64_t value) {
    unsigned char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
    mix(bytes, sizeof(bytes));
  };
  constexpr uint64_t kSampleBytes = 64;
  unsigned char sample[kSampleBytes];
  for (const auto& [name, tensor] : tensors_) {  // std::map: sorted by name
    const TensorEntry& entry = *tensor.entry;
    mix_u64(name.size());
    mix(name.data(), name.size());
    mix_u64(static_cast<uint64_t>(entry.dtype));
    mix_u64(entry.shape.size());
    for (const int64_t dim : entry.shape) mix_u64(static_cast<uint64_t>(dim));
    const uint64_t size = entry.num_bytes;
    const uint64_t last = size > kSampleBytes ? size - kSampleBytes : 0;
    for (const uint64_t offset : {uint64_t{0}, size / 3, 2 * (size / 3), last}) {
      const uint64_t begin = std::min(offset, last);
      const uint64_t length = std::min(kSampleBytes, size - begin);
      if (generated_ != nullptr) {
        generated_->CopyBytes(name, begin, length, sample);
      } else {
        std::memcpy(sample, static_cast<const unsigned char*>(entry.data) + begin, length);
      }
      mix(sample, length);
    }
  }
  return hash;
}

}  // namespace deltaserve::model
