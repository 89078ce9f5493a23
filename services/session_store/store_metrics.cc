#include "services/session_store/store_metrics.h"

#include <sys/statvfs.h>

#include <string>

#include "prometheus/client_metric.h"
#include "prometheus/metric_type.h"

namespace deltaserve::services {
namespace {

prometheus::MetricFamily Family(const std::string& name, const std::string& help,
                                prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

void AddPoint(prometheus::MetricFamily& family, double value,
              std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  if (family.type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

}  // namespace

std::vector<prometheus::MetricFamily> StoreMetrics::Collect() const {
  using prometheus::MetricType;
  const StoreStats s = store_.Stats();
  std::vector<prometheus::MetricFamily> out;

  auto sessions = Family("deltaserve_session_store_sessions", "Sessions held", MetricType::Gauge);
  AddPoint(sessions, static_cast<double>(s.sessions));
  out.push_back(sessions);

  auto parts = Family("deltaserve_session_store_parts", "Session parts held, by tier", MetricType::Gauge);
  AddPoint(parts, static_cast<double>(s.memory_parts), {{"tier", "memory"}});
  AddPoint(parts, static_cast<double>(s.disk_parts), {{"tier", "disk"}});
  out.push_back(parts);

  auto bytes = Family("deltaserve_session_store_bytes", "Payload bytes held, by tier", MetricType::Gauge);
  AddPoint(bytes, static_cast<double>(s.memory_bytes), {{"tier", "memory"}});
  AddPoint(bytes, static_cast<double>(s.disk_bytes), {{"tier", "disk"}});
  out.push_back(bytes);

  auto hits = Family("deltaserve_session_store_hits_total", "Part reads served, by tier",
                     MetricType::Counter);
  AddPoint(hits, static_cast<double>(s.memory_hits_total), {{"tier", "memory"}});
  AddPoint(hits, static_cast<double>(s.disk_hits_total), {{"tier", "disk"}});
  out.push_back(hits);

  auto misses = Family("deltaserve_session_store_misses_total",
                       "Part reads a tier could not serve (memory: went to disk; disk: damaged or gone)",
                       MetricType::Counter);
  AddPoint(misses, static_cast<double>(s.memory_misses_total), {{"tier", "memory"}});
  AddPoint(misses, static_cast<double>(s.disk_misses_total), {{"tier", "disk"}});
  out.push_back(misses);

  auto written = Family("deltaserve_session_store_parts_written_total", "Parts written",
                        MetricType::Counter);
  AddPoint(written, static_cast<double>(s.parts_written_total));
  out.push_back(written);

  auto evictions = Family("deltaserve_session_store_evictions_total",
                          "Parts moved out of memory (kind=part) or sessions dropped (kind=session)",
                          MetricType::Counter);
  AddPoint(evictions, static_cast<double>(s.memory_evictions_total), {{"kind", "part"}});
  AddPoint(evictions, static_cast<double>(s.session_evictions_total), {{"kind", "session"}});
  out.push_back(evictions);

  auto expirations = Family("deltaserve_session_store_expirations_total",
                            "Sessions expired by their time to live", MetricType::Counter);
  AddPoint(expirations, static_cast<double>(s.expirations_total));
  out.push_back(expirations);

  auto damaged = Family("deltaserve_session_store_checksum_failures_total",
                        "Parts whose stored bytes failed their checksum", MetricType::Counter);
  AddPoint(damaged, static_cast<double>(s.checksum_failures_total));
  out.push_back(damaged);

  auto quarantined = Family("deltaserve_session_store_quarantined_files_total",
                            "Files moved aside as damaged or unknown", MetricType::Counter);
  AddPoint(quarantined, static_cast<double>(s.quarantined_files_total));
  out.push_back(quarantined);

  // The limits beside the usage gauges, for "near capacity" alerts; a tier or count without a
  // configured limit has no series.
  const SnapshotStoreOptions& o = store_.options();
  auto limits = Family("deltaserve_session_store_limit_bytes",
                       "Configured payload byte limit, by tier (disk: only when set)",
                       MetricType::Gauge);
  AddPoint(limits, static_cast<double>(o.memory_limit_bytes), {{"tier", "memory"}});
  if (!o.data_dir.empty() && o.max_disk_bytes > 0) {
    AddPoint(limits, static_cast<double>(o.max_disk_bytes), {{"tier", "disk"}});
  }
  out.push_back(limits);
  if (o.max_sessions > 0) {
    auto max_sessions = Family("deltaserve_session_store_max_sessions",
                               "Configured limit on sessions held", MetricType::Gauge);
    AddPoint(max_sessions, static_cast<double>(o.max_sessions));
    out.push_back(max_sessions);
  }
  if (!o.data_dir.empty()) {
    struct statvfs fs {};
    if (statvfs(o.data_dir.c_str(), &fs) == 0) {
      auto available = Family("deltaserve_session_store_filesystem_available_bytes",
                              "Bytes the disk tier's file system still offers this process",
                              MetricType::Gauge);
      AddPoint(available, static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize));
      out.push_back(available);
      auto size = Family("deltaserve_session_store_filesystem_size_bytes",
                         "Size of the disk tier's file system", MetricType::Gauge);
      AddPoint(size, static_cast<double>(fs.f_blocks) * static_cast<double>(fs.f_frsize));
      out.push_back(size);
    }
  }
  return out;
}

}  // namespace deltaserve::services
