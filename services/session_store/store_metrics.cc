#include "services/session_store/store_metrics.h"

#include <sys/statvfs.h>

#include <string>

#include "prometheus/metric_type.h"
#include "services/common/metrics.h"

namespace deltaserve::services {

std::vector<prometheus::MetricFamily> StoreMetrics::Collect() const {
  using prometheus::MetricType;
  const StoreStats s = store_.Stats();
  std::vector<prometheus::MetricFamily> out;

  auto sessions = CollectedFamily("deltaserve_session_store_sessions", "Sessions held", MetricType::Gauge);
  AddCollectedPoint(sessions, static_cast<double>(s.sessions));
  out.push_back(sessions);

  auto parts = CollectedFamily("deltaserve_session_store_parts", "Session parts held, by tier", MetricType::Gauge);
  AddCollectedPoint(parts, static_cast<double>(s.memory_parts), {{"tier", "memory"}});
  AddCollectedPoint(parts, static_cast<double>(s.disk_parts), {{"tier", "disk"}});
  out.push_back(parts);

  auto bytes = CollectedFamily("deltaserve_session_store_bytes", "Payload bytes held, by tier", MetricType::Gauge);
  AddCollectedPoint(bytes, static_cast<double>(s.memory_bytes), {{"tier", "memory"}});
  AddCollectedPoint(bytes, static_cast<double>(s.disk_bytes), {{"tier", "disk"}});
  out.push_back(bytes);

  auto hits = CollectedFamily("deltaserve_session_store_hits_total", "Part reads served, by tier",
                     MetricType::Counter);
  AddCollectedPoint(hits, static_cast<double>(s.memory_hits_total), {{"tier", "memory"}});
  AddCollectedPoint(hits, static_cast<double>(s.disk_hits_total), {{"tier", "disk"}});
  out.push_back(hits);

  auto misses = CollectedFamily("deltaserve_session_store_misses_total",
                       "Part reads a tier could not serve (memory: went to disk; disk: damaged or gone)",
                       MetricType::Counter);
  AddCollectedPoint(misses, static_cast<double>(s.memory_misses_total), {{"tier", "memory"}});
  AddCollectedPoint(misses, static_cast<double>(s.disk_misses_total), {{"tier", "disk"}});
  out.push_back(misses);

  auto written = CollectedFamily("deltaserve_session_store_parts_written_total", "Parts written",
                        MetricType::Counter);
  AddCollectedPoint(written, static_cast<double>(s.parts_written_total));
  out.push_back(written);

  auto evictions = CollectedFamily("deltaserve_session_store_evictions_total",
                          "Parts moved out of memory (kind=part) or sessions dropped (kind=session)",
                          MetricType::Counter);
  AddCollectedPoint(evictions, static_cast<double>(s.memory_evictions_total), {{"kind", "part"}});
  AddCollectedPoint(evictions, static_cast<double>(s.session_evictions_total), {{"kind", "session"}});
  out.push_back(evictions);

  auto expirations = CollectedFamily("deltaserve_session_store_expirations_total",
                            "Sessions expired by their time to live", MetricType::Counter);
  AddCollectedPoint(expirations, static_cast<double>(s.expirations_total));
  out.push_back(expirations);

  auto damaged = CollectedFamily("deltaserve_session_store_checksum_failures_total",
                        "Parts whose stored bytes failed their checksum", MetricType::Counter);
  AddCollectedPoint(damaged, static_cast<double>(s.checksum_failures_total));
  out.push_back(damaged);

  auto quarantined = CollectedFamily("deltaserve_session_store_quarantined_files_total",
                            "Files moved aside as damaged or unknown", MetricType::Counter);
  AddCollectedPoint(quarantined, static_cast<double>(s.quarantined_files_total));
  out.push_back(quarantined);

  // The limits beside the usage gauges, for "near capacity" alerts; a tier or count without a
  // configured limit has no series.
  const SnapshotStoreOptions& o = store_.options();
  auto limits = CollectedFamily("deltaserve_session_store_limit_bytes",
                       "Configured payload byte limit, by tier (disk: only when set)",
                       MetricType::Gauge);
  AddCollectedPoint(limits, static_cast<double>(o.memory_limit_bytes), {{"tier", "memory"}});
  if (!o.data_dir.empty() && o.max_disk_bytes > 0) {
    AddCollectedPoint(limits, static_cast<double>(o.max_disk_bytes), {{"tier", "disk"}});
  }
  out.push_back(limits);
  if (o.max_sessions > 0) {
    auto max_sessions = CollectedFamily("deltaserve_session_store_max_sessions",
                               "Configured limit on sessions held", MetricType::Gauge);
    AddCollectedPoint(max_sessions, static_cast<double>(o.max_sessions));
    out.push_back(max_sessions);
  }
  if (!o.data_dir.empty()) {
    struct statvfs fs {};
    if (statvfs(o.data_dir.c_str(), &fs) == 0) {
      auto available = CollectedFamily("deltaserve_session_store_filesystem_available_bytes",
                              "Bytes the disk tier's file system still offers this process",
                              MetricType::Gauge);
      AddCollectedPoint(available, static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize));
      out.push_back(available);
      auto size = CollectedFamily("deltaserve_session_store_filesystem_size_bytes",
                         "Size of the disk tier's file system", MetricType::Gauge);
      AddCollectedPoint(size, static_cast<double>(fs.f_blocks) * static_cast<double>(fs.f_frsize));
      out.push_back(size);
    }
  }
  return out;
}

}  // namespace deltaserve::services
