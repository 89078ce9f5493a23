// Parsing of comma-separated id lists from the command line.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace deltaserve::cli {

// "5,6,7" -> {5, 6, 7}; every item a non-negative integer that fits int32.
absl::StatusOr<std::vector<int32_t>> ParseTokenList(std::string_view text, std::string_view flag);

// "last", "all" or "0,63,64" against a prompt of `num_tokens` positions.
absl::StatusOr<std::vector<int64_t>> ParsePositions(std::string_view text, int64_t num_tokens);

}  // namespace deltaserve::cli
