// Reads a counter back from a Prometheus registry in the stage tests.
#pragma once

#include <prometheus/registry.h>

#include <string>

namespace deltaserve::testing {

// The value of counter `name`: its series whose labels include `label` = `value`, or its first
// series where no label is given; -1 where there is none.
inline double CounterValue(prometheus::Registry& registry, const std::string& name, const std::string& label = "",
                           const std::string& value = "") {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      if (label.empty()) return metric.counter.value;
      for (const prometheus::ClientMetric::Label& pair : metric.label) {
        if (pair.name == label && pair.value == value) return metric.counter.value;
      }
    }
  }
  return -1;
}

}  // namespace deltaserve::testing
