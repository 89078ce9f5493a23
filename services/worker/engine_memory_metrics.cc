#include "services/worker/engine_memory_metrics.h"

#include <string>
#include <utility>

#include "prometheus/metric_type.h"
#include "services/common/metrics.h"

namespace deltaserve::services {

std::vector<prometheus::MetricFamily> EngineMemoryMetrics::Collect() const {
  const kernels::MemoryUse use = backend_->memory_use();
  if (!use.known) return {};
  struct Point {
    int64_t value;
    std::vector<prometheus::ClientMetric::Label> labels;
  };
  std::vector<prometheus::MetricFamily> out;
  const auto gauge = [&out](const std::string& name, const std::string& help, std::vector<Point> points) {
    prometheus::MetricFamily family = CollectedFamily(name, help, prometheus::MetricType::Gauge);
    for (Point& p : points) AddCollectedPoint(family, static_cast<double>(p.value), std::move(p.labels));
    out.push_back(std::move(family));
  };
  gauge("deltaserve_engine_memory_bytes",
        "Memory the engine's backend holds for sequences' states (KDA states, latent pages) and for the "
        "steps' buffers",
        {{use.state_bytes, {{"use", "states"}}}, {use.step_bytes, {{"use", "step_buffers"}}}});
  gauge("deltaserve_engine_step_room_bytes",
        "The most the steps' buffers have needed at once: new states leave it free", {{use.step_room_bytes, {}}});
  gauge("deltaserve_engine_memory_limit_bytes", "The engine's memory limit (--device-memory-gib); 0: none",
        {{use.limit_bytes, {}}});
  gauge("deltaserve_engine_memory_counted_bytes",
        "Memory counted against the limit (on CUDA also the weights, step graphs' arenas and cuBLAS's workspace); "
        "0 without one",
        {{use.counted_bytes, {}}});
  return out;
}

}  // namespace deltaserve::services
