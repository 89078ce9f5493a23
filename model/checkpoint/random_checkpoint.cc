// Random checkpoints: a counter-based generator (splitmix64 of seed, tensor name and element
// index) gives every element independently, so tensors are filled in parallel chunks and the
// bytes depend neither on thread count nor on shard size.
#include "model/checkpoint/random_checkpoint.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <numbers>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "model/checkpoint/errno_status.h"
#include "model/checkpoint/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace deltaserve::model {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; the fill writes native words");

using kernels::DType;

constexpr uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ull;
constexpr char kIndexName[] = "model.safetensors.index.json";
// Filesystem slack per file (a block) on top of the exact byte count.
constexpr uint64_t kPerFileSlackBytes = 4096;
// Below this many elements a chunk is filled on the calling thread.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 16;

uint64_t SplitMix64(uint64_t x) {
  x += kGoldenGamma;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Fnv1a64(const std::string& text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

// Draw number `counter` of one tensor's stream.
class CounterRng {
 public:
  CounterRng(uint64_t seed, const std::string& name)
      : key_(SplitMix64(seed ^ SplitMix64(Fnv1a64(name)))) {}

  uint64_t Bits(uint64_t counter) const { return SplitMix64(key_ + counter * kGoldenGamma); }
  double Uniform(uint64_t counter) const {  // [0, 1)
    return static_cast<double>(Bits(counter) >> 11) * 0x1.0p-53;
  }
  // Box-Muller from one draw per pair (2p, 2p+1): element 2p takes the cosine, 2p+1 the sine.
  // Single precision with 24-bit uniforms (tails cut at 5.8 sigma) is plenty for bf16 weights
  // and several times faster than double.
  void NormalPair(uint64_t pair, float& even, float& odd) const {
    const uint64_t bits = Bits(pair);
    const float u1 = static_cast<float>((bits >> 40) + 1) * 0x1.0p-24f;        // (0, 1]
    const float u2 = static_cast<float>((bits >> 8) & 0xffffff) * 0x1.0p-24f;  // [0, 1)
    const float radius = std::sqrt(-2.0f * std::log(u1));
    const float angle = 2.0f * std::numbers::pi_v<float> * u2;
    even = radius * std::cos(angle);
    odd = radius * std::sin(angle);
  }

 private:
  uint64_t key_;
};

void Store(void* dst, int64_t index, DType dtype, float f) {
  auto* bytes = static_cast<unsigned char*>(dst);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(bytes + index * 4, &f, 4);
      return;
    case DType::kBF16: {
      const uint16_t bits = kernels::F32ToBF16(f);
      std::memcpy(bytes + index * 2, &bits, 2);
      return;
    }
    case DType::kF16: {
      const uint16_t bits = kernels::F32ToF16(f);
      std::memcpy(bytes + index * 2, &bits, 2);
      return;
    }
    case DType::kI32: {
      const int32_t integer = static_cast<int32_t>(f);
      std::memcpy(bytes + index * 4, &integer, 4);
      return;
    }
  }
}

double InverseSoftplus(double y) { return std::log(std::expm1(y)); }

// Fills `num_elements` values mean + stddev * N(0, 1).
void FillNormal(const CounterRng& rng, DType dtype, float mean, float stddev, int64_t first,
                int64_t num_elements, void* dst) {
  const int64_t end = first + num_elements;
  int64_t i = first;
  while (i < end) {
    float even = 0.0f;
    float odd = 0.0f;
    rng.NormalPair(static_cast<uint64_t>(i) >> 1, even, odd);
    if ((i & 1) == 0) {
      Store(dst, i - first, dtype, mean + stddev * even);
      if (i + 1 < end) Store(dst, i + 1 - first, dtype, mean + stddev * odd);
      i += 2;
    } else {
      Store(dst, i - first, dtype, mean + stddev * odd);
      i += 1;
    }
  }
}

template <typename ValueOfUniform>
void FillFromUniform(const CounterRng& rng, DType dtype, int64_t first, int64_t num_elements,
                     void* dst, ValueOfUniform value) {
  for (int64_t k = 0; k < num_elements; ++k) {
    Store(dst, k, dtype,
          static_cast<float>(value(rng.Uniform(static_cast<uint64_t>(first + k)))));
  }
}

float LastDimScale(const TensorSpec& spec) {
  const int64_t fan = spec.shape.empty() ? 1 : std::max<int64_t>(1, spec.shape.back());
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan)));
}

std::string FormatBytes(uint64_t bytes) {
  return absl::StrFormat("%.2f GiB (%d bytes)", static_cast<double>(bytes) / (1ull << 30), bytes);
}

std::string ShardName(size_t index, size_t count) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", index + 1, count);
}

struct Plan {
  std::vector<TensorSpec> specs;
  std::vector<std::vector<size_t>> shards;  // indices into specs, in write order
  std::vector<std::string> shard_names;
  std::string config_json;
  std::string index_json;
  uint64_t total_bytes = 0;  // everything on disk
};

std::vector<TensorToWrite> ShardTensors(const Plan& plan, size_t shard, uint64_t seed,
                                        int threads) {
  std::vector<TensorToWrite> tensors;
  for (const size_t index : plan.shards[shard]) {
    const TensorSpec* spec = &plan.specs[index];
    tensors.push_back({spec->name, spec->dtype, spec->shape,
                       [spec, seed, threads](int64_t first, int64_t count, void* dst) {
                         FillRandomTensorParallel(*spec, seed, threads, first, count, dst);
                         return absl::OkStatus();
                       }});
  }
  return tensors;
}

absl::StatusOr<Plan> MakePlan(const KimiLinearConfig& config,
                              const RandomCheckpointOptions& options) {
  DS_RETURN_IF_ERROR(config.Validate());
  if (options.max_shard_bytes == 0) {
    return absl::InvalidArgumentError("max_shard_bytes must be positive");
  }
  if (options.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be >= 0 (0: hardware), got ", options.threads));
  }
  Plan plan;
  plan.specs = ExpectedTensorSpecs(config);

  std::vector<uint64_t> tensor_bytes;
  uint64_t data_bytes = 0;
  uint64_t shard_bytes = 0;
  for (size_t i = 0; i < plan.specs.size(); ++i) {
    const TensorSpec& spec = plan.specs[i];
    DS_ASSIGN_OR_RETURN(const uint64_t bytes, TensorDataBytes(spec.name, spec.dtype, spec.shape));
    if (__builtin_add_overflow(data_bytes, bytes, &data_bytes)) {
      return absl::InvalidArgumentError("checkpoint size overflows 64 bits");
    }
    if (plan.shards.empty() || (shard_bytes > 0 && shard_bytes + bytes > options.max_shard_bytes)) {
      plan.shards.emplace_back();
      shard_bytes = 0;
    }
    plan.shards.back().push_back(i);
    shard_bytes += bytes;
  }

  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = data_bytes;
  for (size_t s = 0; s < plan.shards.size(); ++s) {
    plan.shard_names.push_back(ShardName(s, plan.shards.size()));
    DS_ASSIGN_OR_RETURN(const uint64_t header_bytes,
                        SafetensorsHeaderBytes(ShardTensors(plan, s, 0, 1), {{"format", "pt"}}));
    total += header_bytes + kPerFileSlackBytes;
    for (const size_t i : plan.shards[s]) weight_map[plan.specs[i].name] = plan.shard_names[s];
  }
  const nlohmann::json index = {{"metadata", {{"total_size", data_bytes}}},
                                {"weight_map", weight_map}};
  try {
    plan.index_json = index.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot encode the index: ", e.what()));
  }
  plan.config_json = ToOfficialConfigJson(config);
  total += plan.index_json.size() + plan.config_json.size() + 2 * kPerFileSlackBytes;
  plan.total_bytes = total;
  return plan;
}

// statvfs needs an existing path: the directory itself or its nearest existing ancestor.
absl::Status CheckFreeSpace(const std::string& dir, uint64_t needed_bytes) {
  std::error_code error;
  std::filesystem::path probe = std::filesystem::absolute(dir, error);
  if (error) return ErrnoToStatus(error.value(), absl::StrCat(dir, ": cannot resolve"));
  while (!std::filesystem::exists(probe, error) && probe.has_relative_path()) {
    probe = probe.parent_path();
  }
  struct statvfs fs;
  if (::statvfs(probe.c_str(), &fs) != 0) {
    return ErrnoToStatus(errno, absl::StrCat(probe.string(), ": statvfs failed"));
  }
  const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (free_bytes < needed_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat(dir, ": the random checkpoint needs ", FormatBytes(needed_bytes),
                     " but the filesystem of ", probe.string(), " has only ",
                     FormatBytes(free_bytes), " free"));
  }
  return absl::OkStatus();
}

}  // namespace

void FillRandomTensor(const TensorSpec& spec, uint64_t seed, int64_t first_element,
                      int64_t num_elements, void* dst) {
  const CounterRng rng(seed, spec.name);
  const DType dtype = spec.dtype;
  switch (spec.role) {
    case TensorRole::kEmbedding:
      FillNormal(rng, dtype, 0.0f, 1.0f, first_element, num_elements, dst);
      return;
    case TensorRole::kLmHead:
    case TensorRole::kProjection:
    case TensorRole::kRouterWeight:  // [E, D]: 1/sqrt(D) as well
    case TensorRole::kConvWeight:    // [C, 1, W]: 1/sqrt(W)
      FillNormal(rng, dtype, 0.0f, LastDimScale(spec), first_element, num_elements, dst);
      return;
    case TensorRole::kNormWeight:
      FillNormal(rng, dtype, 1.0f, 0.1f, first_element, num_elements, dst);
      return;
    case TensorRole::kALog:  // decay rates exp(A_log) in [1, 16)
      FillFromUniform(rng, dtype, first_element, num_elements, dst,
                      [](double u) { return std::log(1.0 + 15.0 * u); });
      return;
    case TensorRole::kDtBias: {  // softplus(dt_bias) = dt, log-uniform in [1e-3, 1e-1)
      FillFromUniform(rng, dtype, first_element, num_elements, dst, [](double u) {
        const double log_lo = std::log(1e-3);
        const double log_hi = std::log(1e-1);
        return InverseSoftplus(std::exp(log_lo + u * (log_hi - log_lo)));
      });
      return;
    }
    case TensorRole::kRouterBias:
      FillFromUniform(rng, dtype, first_element, num_elements, dst,
                      [](double u) { return -0.05 + 0.1 * u; });
      return;
  }
}

// Every element depends only on its index, so the split does not change the bytes.
void FillRandomTensorParallel(const TensorSpec& spec, uint64_t seed, int threads, int64_t first,
                              int64_t num_elements, void* dst) {
  const int64_t pieces = std::min<int64_t>(
      std::max(threads, 1), std::max<int64_t>(1, num_elements / kMinElementsPerThread));
  const int64_t per_piece = (num_elements + pieces - 1) / pieces;
  const int64_t element_bytes = static_cast<int64_t>(kernels::DTypeSize(spec.dtype));
  auto* bytes = static_cast<unsigned char*>(dst);
  const auto fill_piece = [&](int64_t piece) {
    const int64_t begin = piece * per_piece;
    const int64_t count = std::min(per_piece, num_elements - begin);
    if (count > 0) {
      FillRandomTensor(spec, seed, first + begin, count, bytes + begin * element_bytes);
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(pieces));
  int64_t piece = 1;
  try {
    for (; piece < pieces; ++piece) workers.emplace_back(fill_piece, piece);
  } catch (const std::system_error&) {
    // Out of threads: the calling thread does the rest.
  }
  for (int64_t rest = piece; rest < pieces; ++rest) fill_piece(rest);
  fill_piece(0);
  for (std::thread& worker : workers) worker.join();
}

absl::StatusOr<uint64_t> RandomCheckpointBytes(const KimiLinearConfig& config,
                                               const RandomCheckpointOptions& options) {
  DS_ASSIGN_OR_RETURN(const Plan plan, MakePlan(config, options));
  return plan.total_bytes;
}

absl::Status WriteRandomCheckpoint(const KimiLinearConfig& config, uint64_t seed,
                                   const std::string& dir,
                                   const RandomCheckpointOptions& options) {
  if (dir.empty()) return absl::InvalidArgumentError("no output directory given");
  DS_ASSIGN_OR_RETURN(const Plan plan, MakePlan(config, options));
  if (plan.total_bytes > kRandomCheckpointSoftLimitBytes && !options.allow_large) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, ": the random checkpoint would take ", FormatBytes(plan.total_bytes),
                     ", more than the ", FormatBytes(kRandomCheckpointSoftLimitBytes),
                     " allowed by default; pass --allow-large to write it"));
  }
  DS_RETURN_IF_ERROR(CheckFreeSpace(dir, plan.total_bytes));

  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return ErrnoToStatus(error.value(), absl::StrCat(dir, ": cannot create directory"));

  const int threads =
      options.threads > 0 ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (size_t s = 0; s < plan.shards.size(); ++s) {
    DS_RETURN_IF_ERROR(WriteSafetensors(absl::StrCat(dir, "/", plan.shard_names[s]),
                                        ShardTensors(plan, s, seed, threads), {{"format", "pt"}}));
  }
  DS_RETURN_IF_ERROR(WriteFileAtomically(absl::StrCat(dir, "/config.json"), plan.config_json));
  // Last, so an interrupted run never looks like a complete checkpoint.
  return WriteFileAtomically(absl::StrCat(dir, "/", kIndexName), plan.index_json);
}

}  // namespace deltaserve::model
