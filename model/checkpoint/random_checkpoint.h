// Writes a random but well-conditioned checkpoint in the official layout (spec §6) for any
// configuration: config.json, sharded safetensors and the index, values a function of
// (seed, tensor name, element index) only.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/checkpoint/tensor_specs.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {

struct RandomCheckpointOptions {
  uint64_t max_shard_bytes = uint64_t{4} << 30;  // tensor bytes per shard; one tensor may exceed it
  bool allow_large = false;                      // permit more than kRandomCheckpointSoftLimitBytes
  int threads = 0;                               // 0: hardware concurrency
};

// Above this total size WriteRandomCheckpoint refuses unless allow_large is set.
inline constexpr uint64_t kRandomCheckpointSoftLimitBytes = uint64_t{8} << 30;

// Bytes WriteRandomCheckpoint would put on disk: shards (headers included), config and index.
absl::StatusOr<uint64_t> RandomCheckpointBytes(const KimiLinearConfig& config,
                                               const RandomCheckpointOptions& options = {});

// Writes the checkpoint into `dir` (created if missing; existing files of the same names are
// replaced atomically, each shard appearing only once complete, the index last). Refuses before
// writing anything when the total exceeds kRandomCheckpointSoftLimitBytes without allow_large
// (FAILED_PRECONDITION) or exceeds the filesystem's free space (RESOURCE_EXHAUSTED). The bytes
// written do not depend on options.threads or options.max_shard_bytes beyond the shard split.
absl::Status WriteRandomCheckpoint(const KimiLinearConfig& config, uint64_t seed,
                                   const std::string& dir,
                                   const RandomCheckpointOptions& options = {});

// Elements [first_element, first_element + num_elements) of tensor `spec`'s random values for
// `seed`, encoded in spec.dtype at `dst`. Any split of a tensor into ranges gives the same bytes.
void FillRandomTensor(const TensorSpec& spec, uint64_t seed, int64_t first_element,
                      int64_t num_elements, void* dst);

// FillRandomTensor split over up to `threads` threads (at least 1); the same bytes.
void FillRandomTensorParallel(const TensorSpec& spec, uint64_t seed, int threads,
                              int64_t first_element, int64_t num_elements, void* dst);

}  // namespace deltaserve::model
