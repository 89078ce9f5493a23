// A process's engine memory on /metrics: what the backend's books hold at the scrape.
#include "services/worker/engine_memory_metrics.h"

#include <map>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"

namespace deltaserve::services {
namespace {

// Each point as "family{label=value}" (or the family's name alone) to its value.
std::map<std::string, double> Points(const EngineMemoryMetrics& metrics) {
  std::map<std::string, double> points;
  for (const prometheus::MetricFamily& family : metrics.Collect()) {
    for (const prometheus::ClientMetric& metric : family.metric) {
      std::string name = family.name;
      for (const auto& label : metric.label) name += "{" + label.name + "=" + label.value + "}";
      points[name] = metric.gauge.value;
    }
  }
  return points;
}

TEST(EngineMemoryMetrics, ReportWhatTheBackendHoldsAtEachScrape) {
  auto owned = std::make_shared<kernels::cpu::CpuBackend>(
      kernels::cpu::CpuBackendOptions{.num_threads = 1, .memory_limit_bytes = 1 << 20});
  kernels::cpu::CpuBackend& backend = *owned;
  const EngineMemoryMetrics metrics(owned);
  {
    kernels::Tensor step = backend.Allocate(1, 4096, kernels::DType::kF32);  // 16 KiB
    EXPECT_EQ(Points(metrics)["deltaserve_engine_memory_bytes{use=step_buffers}"], 16384);
  }
  EXPECT_FALSE(backend.TakeFailure().failed());  // the step ran: its 16 KiB are the steps' room
  kernels::Tensor state = backend.AllocateState(1, 1024, kernels::DType::kF32);  // 4 KiB
  const std::map<std::string, double> points = Points(metrics);
  EXPECT_EQ(points.at("deltaserve_engine_memory_bytes{use=states}"), 4096);
  EXPECT_EQ(points.at("deltaserve_engine_memory_bytes{use=step_buffers}"), 0);
  EXPECT_EQ(points.at("deltaserve_engine_step_room_bytes"), 16384);
  EXPECT_EQ(points.at("deltaserve_engine_memory_limit_bytes"), 1 << 20);
  EXPECT_EQ(points.at("deltaserve_engine_memory_counted_bytes"), 4096);
}

TEST(EngineMemoryMetrics, WithoutALimitTheLimitAndWhatCountsAgainstItAreZero) {
  auto backend = std::make_shared<kernels::cpu::CpuBackend>(kernels::cpu::CpuBackendOptions{.num_threads = 1});
  kernels::Tensor state = backend->AllocateState(1, 1024, kernels::DType::kF32);
  const std::map<std::string, double> points = Points(EngineMemoryMetrics(backend));
  EXPECT_EQ(points.at("deltaserve_engine_memory_bytes{use=states}"), 4096);
  EXPECT_EQ(points.at("deltaserve_engine_memory_limit_bytes"), 0);
  EXPECT_EQ(points.at("deltaserve_engine_memory_counted_bytes"), 0);
}

}  // namespace
}  // namespace deltaserve::services
