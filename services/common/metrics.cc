// Metric naming checks, standard buckets, exception-free family builders, process metrics.
#include "services/common/metrics.h"

#include <prometheus/check_names.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"

namespace deltaserve::services {

prometheus::MetricFamily CollectedFamily(const std::string& name, const std::string& help,
                                         prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

void AddCollectedPoint(prometheus::MetricFamily& family, double value,
                       std::vector<prometheus::ClientMetric::Label> labels) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  if (family.type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}
namespace {

absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Units Prometheus asks to express in base units instead (seconds, bytes, ratios).
constexpr const char* kNonBaseUnitSuffixes[] = {
    "_ms",          "_milliseconds", "_us",        "_microseconds", "_ns",
    "_nanoseconds", "_minutes",      "_hours",     "_days",         "_kb",
    "_kib",         "_kilobytes",    "_mb",        "_mib",          "_megabytes",
    "_gb",          "_gib",          "_gigabytes", "_bits",         "_percent",
};

// Suffixes the exposition format generates for histograms and summaries.
constexpr const char* kReservedSuffixes[] = {"_count", "_sum", "_bucket"};

std::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "metric";
}

absl::Status CheckHelp(std::string_view name, std::string_view help) {
  if (help.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat("metric %s: help text is empty", name));
  }
  return absl::OkStatus();
}

absl::Status CheckLabels(std::string_view name, const prometheus::Labels& labels) {
  for (const auto& [label, value] : labels) {
    if (!prometheus::CheckLabelName(label)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("metric %s: invalid label name '%s'", name, label));
    }
  }
  return absl::OkStatus();
}

// Registry::Add throws on a name clash (another type, or other constant labels) and on invalid
// names; the names were checked already, so a throw here is a clash.
template <typename T>
absl::StatusOr<prometheus::Family<T>*> BuildFamily(prometheus::detail::Builder<T> builder,
                                                   prometheus::Registry& registry,
                                                   std::string_view name, std::string_view help,
                                                   const prometheus::Labels& constant_labels,
                                                   MetricType type) {
  DS_RETURN_IF_ERROR(CheckMetricName(name, type));
  DS_RETURN_IF_ERROR(CheckHelp(name, help));
  DS_RETURN_IF_ERROR(CheckLabels(name, constant_labels));
  try {
    return &builder.Name(std::string(name))
                .Help(std::string(help))
                .Labels(constant_labels)
                .Register(registry);
  } catch (const std::exception& e) {
    return absl::AlreadyExistsError(absl::StrFormat(
        "metric %s: clashes with a registered family of another type or other constant labels "
        "(%s)",
        name, e.what()));
  }
}

}  // namespace

absl::Status CheckMetricName(std::string_view name, MetricType type) {
  const absl::string_view n = AsAbsl(name);
  if (!absl::StartsWith(n, kMetricPrefix) || n.size() == sizeof(kMetricPrefix) - 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("metric name '%s' must start with '%s'", name, kMetricPrefix));
  }
  for (const char c : n) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
      return absl::InvalidArgumentError(
          absl::StrFormat("metric name '%s' must be snake case: [a-z0-9_] only", name));
    }
  }
  if (absl::StrContains(n, "__") || absl::EndsWith(n, "_")) {
    return absl::InvalidArgumentError(
        absl::StrFormat("metric name '%s' has an empty word ('__' or a trailing '_')", name));
  }
  const bool has_total = absl::EndsWith(n, "_total");
  if (type == MetricType::kCounter && !has_total) {
    return absl::InvalidArgumentError(
        absl::StrFormat("counter name '%s' must end in '_total'", name));
  }
  if (type != MetricType::kCounter && has_total) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s name '%s' must not end in '_total' (counters only)", TypeName(type), name));
  }
  for (const char* suffix : kReservedSuffixes) {
    if (absl::EndsWith(n, suffix)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "metric name '%s' must not end in '%s' (generated by Prometheus)", name, suffix));
    }
  }
  const absl::string_view stem = has_total ? n.substr(0, n.size() - 6) : n;
  for (const char* suffix : kNonBaseUnitSuffixes) {
    if (absl::EndsWith(stem, suffix)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "metric name '%s' uses unit '%s'; use base units (_seconds, _bytes, ratios)", name,
          suffix + 1));
    }
  }
  return absl::OkStatus();
}

std::vector<double> LatencyBucketsSeconds() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
          1,      2.5,   5,      10,    25,   60,    120,  300, 600};
}

std::vector<double> SizeBucketsBytes() { return ExponentialBuckets(256, 4, 13); }

std::vector<double> PowerOfTwoBuckets(int max_exponent) {
  return ExponentialBuckets(1, 2, std::max(max_exponent, 0) + 1);
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> buckets;
  if (!(start > 0) || !(factor > 1) || count < 1) return buckets;
  buckets.reserve(count);
  double value = start;
  for (int i = 0; i < count; ++i, value *= factor) buckets.push_back(value);
  return buckets;
}

absl::StatusOr<prometheus::Family<prometheus::Counter>*> AddCounterFamily(
    prometheus::Registry& registry, std::string_view name, std::string_view help,
    const prometheus::Labels& constant_labels) {
  return BuildFamily(prometheus::BuildCounter(), registry, name, help, constant_labels,
                     MetricType::kCounter);
}

absl::StatusOr<prometheus::Family<prometheus::Gauge>*> AddGaugeFamily(
    prometheus::Registry& registry, std::string_view name, std::string_view help,
    const prometheus::Labels& constant_labels) {
  return BuildFamily(prometheus::BuildGauge(), registry, name, help, constant_labels,
                     MetricType::kGauge);
}

absl::StatusOr<prometheus::Histogram*> HistogramFamily::Add(const prometheus::Labels& labels) {
  DS_RETURN_IF_ERROR(CheckLabels(family_->GetName(), labels));
  return AddSeries(*family_, labels, buckets_);
}

absl::StatusOr<HistogramFamily> AddHistogramFamily(prometheus::Registry& registry,
                                                   std::string_view name, std::string_view help,
                                                   std::vector<double> buckets,
                                                   const prometheus::Labels& constant_labels) {
  if (buckets.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat("histogram %s: no buckets", name));
  }
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (!std::isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1]))) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "histogram %s: buckets must be finite and strictly increasing; bucket %d is %g", name, i,
          buckets[i]));
    }
  }
  DS_ASSIGN_OR_RETURN(prometheus::Family<prometheus::Histogram> * family,
                      BuildFamily(prometheus::BuildHistogram(), registry, name, help,
                                  constant_labels, MetricType::kHistogram));
  return HistogramFamily(*family, std::move(buckets));
}

absl::StatusOr<HistogramFamily> AddLatencyHistogram(prometheus::Registry& registry,
                                                    std::string_view name, std::string_view help,
                                                    const prometheus::Labels& constant_labels) {
  if (!absl::EndsWith(AsAbsl(name), "_seconds")) {
    return absl::InvalidArgumentError(
        absl::StrFormat("latency histogram name '%s' must end in '_seconds'", name));
  }
  return AddHistogramFamily(registry, name, help, LatencyBucketsSeconds(), constant_labels);
}

absl::StatusOr<HistogramFamily> AddSizeHistogram(prometheus::Registry& registry,
                                                 std::string_view name, std::string_view help,
                                                 const prometheus::Labels& constant_labels) {
  if (!absl::EndsWith(AsAbsl(name), "_bytes")) {
    return absl::InvalidArgumentError(
        absl::StrFormat("size histogram name '%s' must end in '_bytes'", name));
  }
  return AddHistogramFamily(registry, name, help, SizeBucketsBytes(), constant_labels);
}

absl::Status RegisterProcessMetrics(prometheus::Registry& registry, const ProcessInfo& info,
                                    std::chrono::system_clock::time_point start_time) {
  if (info.version.empty()) return absl::InvalidArgumentError("ProcessInfo.version is empty");
  if (info.role.empty()) return absl::InvalidArgumentError("ProcessInfo.role is empty");
  DS_ASSIGN_OR_RETURN(
      prometheus::Family<prometheus::Gauge> * build_info,
      AddGaugeFamily(registry, "deltaserve_build_info",
                     "Always 1; labels carry the build version and the process role."));
  DS_ASSIGN_OR_RETURN(prometheus::Gauge * build_info_series,
                      AddSeries(*build_info, {{"version", info.version}, {"role", info.role}}));
  build_info_series->Set(1);
  DS_ASSIGN_OR_RETURN(prometheus::Family<prometheus::Gauge> * start_family,
                      AddGaugeFamily(registry, "deltaserve_process_start_time_seconds",
                                     "Start time of the process since the Unix epoch."));
  DS_ASSIGN_OR_RETURN(prometheus::Gauge * start_series, AddSeries(*start_family, {}));
  start_series->Set(std::chrono::duration<double>(start_time.time_since_epoch()).count());
  return absl::OkStatus();
}

}  // namespace deltaserve::services
