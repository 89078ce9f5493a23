// Typed field access for config.json objects; every type and range error names the field.
#include "model/config/json_reader.h"

#include <cmath>
#include <limits>

namespace deltaserve::model::config_internal {

std::string DescribeJson(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return value.get<bool>() ? "boolean true" : "boolean false";
    case Json::value_t::number_integer:
      return "integer " + std::to_string(value.get<int64_t>());
    case Json::value_t::number_unsigned:
      return "integer " + std::to_string(value.get<uint64_t>());
    case Json::value_t::number_float:
      return "float " + value.dump();
    case Json::value_t::string: {
      std::string text = value.dump();
      if (text.size() > 80) text = text.substr(0, 77) + "...";
      return "string " + text;
    }
    case Json::value_t::array:
      return "an array";
    case Json::value_t::object:
      return "an object";
    default:
      return "an unsupported JSON value";
  }
}

std::optional<int64_t> JsonToInt(const Json& value, int64_t min_value, int64_t max_value) {
  int64_t result = 0;
  if (value.is_number_integer() && !value.is_number_unsigned()) {
    result = value.get<int64_t>();
  } else if (value.is_number_unsigned()) {
    const uint64_t unsigned_value = value.get<uint64_t>();
    if (unsigned_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return std::nullopt;
    }
    result = static_cast<int64_t>(unsigned_value);
  } else {
    return std::nullopt;
  }
  if (result < min_value || result > max_value) return std::nullopt;
  return result;
}

ObjectReader::ObjectReader(const Json* object, std::string_view source, std::string_view prefix)
    : object_(object), source_(source), prefix_(prefix) {}

const Json* ObjectReader::Get(std::string_view key) const {
  if (object_ == nullptr || !object_->is_object()) return nullptr;
  const auto it = object_->find(std::string(key));
  return it == object_->end() ? nullptr : &*it;
}

absl::Status ObjectReader::Error(std::string_view key, std::string_view expected,
                                 std::string_view got) const {
  return absl::InvalidArgumentError(source_ + ": " + Name(key) + ": expected " +
                                    std::string(expected) + ", got " + std::string(got));
}

absl::Status ObjectReader::TypeError(std::string_view key, std::string_view expected,
                                     const Json& got) const {
  return Error(key, expected, DescribeJson(got));
}

absl::StatusOr<std::optional<int64_t>> ObjectReader::Int(std::string_view key, int64_t min_value,
                                                         int64_t max_value) const {
  const Json* value = Get(key);
  if (value == nullptr) return std::optional<int64_t>();
  const std::optional<int64_t> result = JsonToInt(*value, min_value, max_value);
  if (!result.has_value()) {
    return TypeError(
        key, "an integer in [" + std::to_string(min_value) + ", " + std::to_string(max_value) + "]",
        *value);
  }
  return result;
}

absl::StatusOr<std::optional<int64_t>> ObjectReader::NullableInt(std::string_view key,
                                                                 int64_t min_value,
                                                                 int64_t max_value) const {
  const Json* value = Get(key);
  if (value == nullptr || value->is_null()) return std::optional<int64_t>();
  return Int(key, min_value, max_value);
}

absl::StatusOr<std::optional<double>> ObjectReader::Double(std::string_view key,
                                                           double exclusive_min,
                                                           double max_value) const {
  const Json* value = Get(key);
  if (value == nullptr) return std::optional<double>();
  const std::string expected =
      "a number in (" + Json(exclusive_min).dump() + ", " + Json(max_value).dump() + "]";
  if (!value->is_number()) return TypeError(key, expected, *value);
  const double result = value->get<double>();
  if (!std::isfinite(result) || result <= exclusive_min || result > max_value) {
    return TypeError(key, expected, *value);
  }
  return std::optional<double>(result);
}

absl::StatusOr<std::optional<bool>> ObjectReader::Bool(std::string_view key) const {
  const Json* value = Get(key);
  if (value == nullptr) return std::optional<bool>();
  if (!value->is_boolean()) return TypeError(key, "a boolean", *value);
  return std::optional<bool>(value->get<bool>());
}

absl::StatusOr<std::optional<std::string>> ObjectReader::String(std::string_view key) const {
  const Json* value = Get(key);
  if (value == nullptr) return std::optional<std::string>();
  if (!value->is_string()) return TypeError(key, "a string", *value);
  return std::optional<std::string>(value->get<std::string>());
}

}  // namespace deltaserve::model::config_internal
