// Typed, exception-free access to the fields of one JSON object of config.json, with error
// messages of the form "<source>: <field>: expected <what>, got <value>". Internal to model/config.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace deltaserve::model::config_internal {

using Json = nlohmann::json;

// A short description of a value for messages: `integer 3`, `float 2.5`, `string "gelu"`, ...
std::string DescribeJson(const Json& value);

// Reads fields of `object` (which must outlive the reader). A field set to null counts as present;
// every getter but the Nullable ones rejects null. Getters return nullopt for absent fields.
class ObjectReader {
 public:
  // `prefix` goes before key names in messages, e.g. "linear_attn_config.". `object` may be null,
  // meaning an absent object with no fields.
  ObjectReader(const Json* object, std::string_view source, std::string_view prefix);

  bool Has(std::string_view key) const { return Get(key) != nullptr; }
  const Json* Get(std::string_view key) const;
  std::string Name(std::string_view key) const { return prefix_ + std::string(key); }
  const std::string& source() const { return source_; }

  // InvalidArgument "<source>: <prefix><key>: expected <expected>, got <got>".
  absl::Status Error(std::string_view key, std::string_view expected, std::string_view got) const;
  absl::Status TypeError(std::string_view key, std::string_view expected, const Json& got) const;

  // An integer (JSON integer literal, not 3.0) in [min_value, max_value].
  absl::StatusOr<std::optional<int64_t>> Int(std::string_view key, int64_t min_value,
                                             int64_t max_value) const;
  // As Int, but null also reads as nullopt.
  absl::StatusOr<std::optional<int64_t>> NullableInt(std::string_view key, int64_t min_value,
                                                     int64_t max_value) const;
  // A finite number (integer literals accepted) in (exclusive_min, max_value].
  absl::StatusOr<std::optional<double>> Double(std::string_view key, double exclusive_min,
                                               double max_value) const;
  absl::StatusOr<std::optional<bool>> Bool(std::string_view key) const;
  absl::StatusOr<std::optional<std::string>> String(std::string_view key) const;

 private:
  const Json* object_;
  std::string source_;
  std::string prefix_;
};

// Converts an integer JSON value to int64 in [min_value, max_value]; nullopt if it is not one
// (a float, a string, out of range ...). Callers word the message.
std::optional<int64_t> JsonToInt(const Json& value, int64_t min_value, int64_t max_value);

}  // namespace deltaserve::model::config_internal
