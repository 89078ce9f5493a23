#include "cli/json_writer.h"

#include <charconv>
#include <cmath>

namespace deltaserve::cli {

void AppendFloat(std::string& out, float value) {
  if (!std::isfinite(value)) {  // JSON has no NaN or infinity
    out += "null";
    return;
  }
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, result.ptr);
}

void AppendFloatArray(std::string& out, std::span<const float> values) {
  out += '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ", ";
    AppendFloat(out, values[i]);
  }
  out += ']';
}

}  // namespace deltaserve::cli
