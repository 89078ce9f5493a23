// A model process's engine memory (kernels::Backend::memory_use), read at each scrape: the bytes
// its sequences' states and its steps' buffers hold, the room states leave to steps, and the
// memory limit (--device-memory-gib) with what counts against it. How close a stage is to
// preempting, as vLLM's KV-cache usage tells.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace deltaserve::services {

class EngineMemoryMetrics final : public prometheus::Collectable {
 public:
  // Holds the backend: a scrape may still read it while a process that failed to start unwinds.
  explicit EngineMemoryMetrics(std::shared_ptr<const kernels::Backend> backend) : backend_(std::move(backend)) {}
  // Nothing for a backend that keeps no books.
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::shared_ptr<const kernels::Backend> backend_;
};

}  // namespace deltaserve::services
