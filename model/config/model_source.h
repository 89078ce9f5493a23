// Where a model comes from: a checkpoint directory, or `random:<preset>[:<seed>]`, the weights
// `deltaserve init-model --preset <preset> --seed <seed>` would write, generated in memory instead
// (for shapes whose checkpoint would not fit on disk). Every --model flag takes either.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {

inline constexpr std::string_view kRandomModelPrefix = "random:";

struct RandomModelSource {
  std::string preset;
  uint64_t seed = 0;
};

// nullopt when `source` names a directory (does not start with "random:"; a directory of that
// name is reached as "./random:..."). InvalidArgument naming the known presets for an unknown
// preset, and for a seed that is not a decimal integer in [0, 2^64).
absl::StatusOr<std::optional<RandomModelSource>> ParseRandomModelSource(std::string_view source);

// The configuration of a model source: the directory's config.json or the preset's (the same
// struct, since presets round-trip through config.json unchanged).
absl::StatusOr<KimiLinearConfig> LoadModelSourceConfig(const std::string& source);

}  // namespace deltaserve::model
