// The session store's Prometheus metrics, read from SnapshotStore::Stats() at each scrape:
// sessions, parts and bytes by tier, hits and misses by tier, evictions, expirations, checksum
// failures.
#pragma once

#include <memory>
#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "services/session_store/snapshot_store.h"

namespace deltaserve::services {

class StoreMetrics final : public prometheus::Collectable {
 public:
  // `store` must outlive this collectable (or its registration).
  explicit StoreMetrics(const SnapshotStore& store) : store_(store) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const SnapshotStore& store_;
};

}  // namespace deltaserve::services
