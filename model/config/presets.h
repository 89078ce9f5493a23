// Built-in Kimi Linear shapes by name: "tiny" (the test fixture), "small" (CPU demo) and
// "kimi-linear-48b-a3b" (the release, spec §1), plus "small-all-mla" and
// "kimi-linear-48b-a3b-all-mla": the same shapes with every layer MLA (no KDA), the paper's
// full-attention baseline. Each preset passes KimiLinearConfig::Validate().
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {

// The preset called `name`; InvalidArgument listing the known names when there is none.
absl::StatusOr<KimiLinearConfig> PresetConfig(std::string_view name);

// Every preset name, smallest shape first, each all-MLA variant after its shape.
std::vector<std::string> PresetNames();

}  // namespace deltaserve::model
