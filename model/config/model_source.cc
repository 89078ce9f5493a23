// Parses `random:<preset>[:<seed>]` model sources and finds a source's configuration.
#include "model/config/model_source.h"

#include <charconv>
#include <system_error>

#include "base/status_macros.h"
#include "model/config/presets.h"

namespace deltaserve::model {
namespace {

absl::Status SourceError(std::string_view source, const std::string& problem) {
  return absl::InvalidArgumentError("model source '" + std::string(source) + "': " + problem);
}

}  // namespace

absl::StatusOr<std::optional<RandomModelSource>> ParseRandomModelSource(std::string_view source) {
  if (!source.starts_with(kRandomModelPrefix)) return std::optional<RandomModelSource>();
  const std::string_view spec = source.substr(kRandomModelPrefix.size());
  const size_t colon = spec.find(':');
  RandomModelSource random;
  random.preset = std::string(spec.substr(0, colon));
  const absl::StatusOr<KimiLinearConfig> preset = PresetConfig(random.preset);
  if (!preset.ok()) {
    return SourceError(source, "expected random:<preset>[:<seed>]; " +
                                   std::string(preset.status().message()));
  }
  if (colon != std::string_view::npos) {
    const std::string_view seed = spec.substr(colon + 1);
    const char* end = seed.data() + seed.size();
    // from_chars takes no sign and no whitespace, so "", "-1", "+1" and " 1" all fail here.
    const auto [parsed_end, error] = std::from_chars(seed.data(), end, random.seed);
    if (seed.empty() || error != std::errc() || parsed_end != end) {
      return SourceError(source, "the seed after the preset must be a decimal integer in "
                                 "[0, 2^64), got \"" + std::string(seed) + "\"");
    }
  }
  return std::optional<RandomModelSource>(std::move(random));
}

absl::StatusOr<KimiLinearConfig> LoadModelSourceConfig(const std::string& source) {
  DS_ASSIGN_OR_RETURN(const std::optional<RandomModelSource> random,
                      ParseRandomModelSource(source));
  if (random.has_value()) return PresetConfig(random->preset);
  return LoadKimiLinearConfig(source + "/config.json");
}

}  // namespace deltaserve::model
