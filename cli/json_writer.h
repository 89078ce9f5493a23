// Compact JSON output for command results: floats in their shortest round-trip form.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace deltaserve::cli {

void AppendFloat(std::string& out, float value);
void AppendFloatArray(std::string& out, std::span<const float> values);
template <typename Int>
void AppendIntArray(std::string& out, std::span<const Int> values) {
  out += '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(values[i]);
  }
  out += ']';
}

}  // namespace deltaserve::cli
