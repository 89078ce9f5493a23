#include "cli/token_list.h"

#include <charconv>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace deltaserve::cli {
namespace {

absl::StatusOr<int64_t> ParseIndex(std::string_view item, std::string_view flag, int64_t max) {
  int64_t value = -1;
  const auto [end, error] = std::from_chars(item.data(), item.data() + item.size(), value);
  if (item.empty() || error != std::errc() || end != item.data() + item.size() || value < 0 ||
      value > max) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(flag), ": '", std::string(item),
                                                   "' is not an integer in [0, ", max, "]"));
  }
  return value;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> ParseTokenList(std::string_view text, std::string_view flag) {
  std::vector<int32_t> ids;
  if (text.empty()) return ids;
  for (absl::string_view item : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    absl::StatusOr<int64_t> value = ParseIndex(std::string_view(item.data(), item.size()), flag, std::numeric_limits<int32_t>::max());
    if (!value.ok()) return value.status();
    ids.push_back(static_cast<int32_t>(*value));
  }
  return ids;
}

absl::StatusOr<std::vector<int64_t>> ParsePositions(std::string_view text, int64_t num_tokens) {
  std::vector<int64_t> positions;
  if (text == "last") return std::vector<int64_t>{num_tokens - 1};
  if (text == "all") {
    for (int64_t i = 0; i < num_tokens; ++i) positions.push_back(i);
    return positions;
  }
  for (absl::string_view item : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    absl::StatusOr<int64_t> value = ParseIndex(std::string_view(item.data(), item.size()), "--positions", num_tokens - 1);
    if (!value.ok()) return value.status();
    positions.push_back(*value);
  }
  return positions;
}

}  // namespace deltaserve::cli
