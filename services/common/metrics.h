// Prometheus conventions for every deltaserve process: the naming rules, standard buckets,
// family builders that return a Status instead of throwing, and the process metrics.
#pragma once

#include <prometheus/client_metric.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/labels.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>
#include <prometheus/registry.h>

#include <chrono>
#include <exception>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deltaserve::services {

inline constexpr char kMetricPrefix[] = "deltaserve_";

enum class MetricType { kCounter, kGauge, kHistogram };

// OK when `name` is a deltaserve metric name: "deltaserve_" then [a-z0-9_] (snake case, no
// "__"), ending in "_total" exactly when it is a counter, in base units (no "_ms",
// "_milliseconds", "_kib", "_mb", ...), and not ending in a suffix Prometheus generates
// ("_count", "_sum", "_bucket"). Units go last: "_seconds", "_bytes", then "_total" for counters
// ("deltaserve_prefill_tokens_total", "deltaserve_snapshot_bytes_total").
absl::Status CheckMetricName(std::string_view name, MetricType type);

// For a prometheus::Collectable that reads its values at each scrape: an empty family, and one
// point of a counter or gauge family.
prometheus::MetricFamily CollectedFamily(const std::string& name, const std::string& help,
                                         prometheus::MetricType type);
void AddCollectedPoint(prometheus::MetricFamily& family, double value,
                       std::vector<prometheus::ClientMetric::Label> labels = {});

// Seconds from 0.5 ms (one decode step of a small batch) to 10 min (a long prefill or a whole
// long generation), about 3 buckets per decade.
std::vector<double> LatencyBucketsSeconds();
// Bytes from 256 B to 4 GiB, x4 per bucket (messages, snapshots).
std::vector<double> SizeBucketsBytes();
// 1, 2, 4, ... up to and including 2^max_exponent (tokens per step, sequences per batch).
std::vector<double> PowerOfTwoBuckets(int max_exponent);
// start, start*factor, ... (`count` values). Requires start > 0, factor > 1, count >= 1.
std::vector<double> ExponentialBuckets(double start, double factor, int count);

// Family builders. A second call with the same name and constant labels returns the same
// family (the first help text stays); a clash in type or constant labels is ALREADY_EXISTS; a
// bad name (CheckMetricName), empty help or bad label name is INVALID_ARGUMENT.
// The registry owns the family; the pointer lives as long as the registry.
absl::StatusOr<prometheus::Family<prometheus::Counter>*> AddCounterFamily(
    prometheus::Registry& registry, std::string_view name, std::string_view help,
    const prometheus::Labels& constant_labels = {});
absl::StatusOr<prometheus::Family<prometheus::Gauge>*> AddGaugeFamily(
    prometheus::Registry& registry, std::string_view name, std::string_view help,
    const prometheus::Labels& constant_labels = {});

// A histogram family whose series all share one set of bucket boundaries. Copyable handle;
// the registry owns the family. Thread-safe like prometheus::Family.
class HistogramFamily {
 public:
  HistogramFamily(prometheus::Family<prometheus::Histogram>& family, std::vector<double> buckets)
      : family_(&family), buckets_(std::move(buckets)) {}

  // The series for `labels`, created on first use. INVALID_ARGUMENT for a bad label name.
  absl::StatusOr<prometheus::Histogram*> Add(const prometheus::Labels& labels = {});

  prometheus::Family<prometheus::Histogram>& family() const { return *family_; }
  const std::vector<double>& buckets() const { return buckets_; }

 private:
  prometheus::Family<prometheus::Histogram>* family_;
  std::vector<double> buckets_;
};

// `buckets` must be non-empty and strictly increasing.
absl::StatusOr<HistogramFamily> AddHistogramFamily(prometheus::Registry& registry,
                                                   std::string_view name, std::string_view help,
                                                   std::vector<double> buckets,
                                                   const prometheus::Labels& constant_labels = {});
// A "_seconds" histogram with LatencyBucketsSeconds().
absl::StatusOr<HistogramFamily> AddLatencyHistogram(prometheus::Registry& registry,
                                                    std::string_view name, std::string_view help,
                                                    const prometheus::Labels& constant_labels = {});
// A "_bytes" histogram with SizeBucketsBytes().
absl::StatusOr<HistogramFamily> AddSizeHistogram(prometheus::Registry& registry,
                                                 std::string_view name, std::string_view help,
                                                 const prometheus::Labels& constant_labels = {});

// prometheus::Family<T>::Add without exceptions: the series for `labels` (created on first use
// from `args`, e.g. nothing for a counter or gauge). INVALID_ARGUMENT for a bad label name.
template <typename T, typename... Args>
absl::StatusOr<T*> AddSeries(prometheus::Family<T>& family, const prometheus::Labels& labels,
                             Args&&... args) {
  try {
    return &family.Add(labels, std::forward<Args>(args)...);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(std::string("metric ") + family.GetName() +
                                      ": cannot add series: " + e.what());
  }
}

struct ProcessInfo {
  // Build version ("0.1.0"); `cli/` passes the project's version.
  std::string version;
  // The process's role: "router", "stage_worker", "expert_worker", "session_store", "serve".
  std::string role;
};

// Registers what every process exports: deltaserve_build_info{version,role} = 1 and
// deltaserve_process_start_time_seconds (Unix time of `start_time`; uptime is
// time() - deltaserve_process_start_time_seconds in PromQL). INVALID_ARGUMENT for an empty
// version or role.
absl::Status RegisterProcessMetrics(prometheus::Registry& registry, const ProcessInfo& info,
                                    std::chrono::system_clock::time_point start_time);

}  // namespace deltaserve::services
