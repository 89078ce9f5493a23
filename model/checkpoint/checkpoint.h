// A model directory: config.json plus either model.safetensors.index.json with its shards or a
// single model.safetensors. Tensors are looked up by name with their expected shape; anything
// missing, misshapen, of a foreign dtype, or left unclaimed is an error naming file and tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/checkpoint/safetensors_file.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {

struct CheckpointTensor {
  const TensorEntry* entry = nullptr;
  const std::string* file = nullptr;  // path of the shard holding it
};

// Tensor data points into the shards' mappings and lives as long as the Checkpoint. Get marks
// tensors claimed, so a Checkpoint is used from one thread at a time.
class Checkpoint {
 public:
  // Opens `dir`: parses config.json, then the index (every listed shard must exist and hold
  // exactly the tensors the index assigns to it) or the single file.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const KimiLinearConfig& config() const { return config_; }

  bool Has(const std::string& name) const;
  // Returns the tensor if its shape is `shape` and its dtype one of F32, BF16, F16; marks it
  // claimed. The error names the tensor, its file, and expected against actual.
  absl::StatusOr<CheckpointTensor> Get(const std::string& name, const std::vector<int64_t>& shape);
  // Every tensor by name, for callers that scan (the unexpected-tensor check, tools).
  const std::map<std::string, CheckpointTensor>& tensors() const { return tensors_; }
  // Names of tensors never returned by Get, sorted.
  std::vector<std::string> Unclaimed() const;

  // A stable digest of the weights: names, dtypes, shapes and a sample of every tensor's bytes.
  uint64_t WeightsFingerprint() const;
  // Identifies the model: the configuration's fingerprint mixed with the weights'. Every process
  // serving this checkpoint (whole, a pipeline stage, an expert shard) gets the same value.
  uint64_t ModelFingerprint() const;

 private:
  Checkpoint() = default;

  std::string dir_;
  KimiLinearConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, CheckpointTensor> tensors_;
  std::set<std::string> claimed_;
};

}  // namespace deltaserve::model
