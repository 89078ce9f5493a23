// A stage worker's Prometheus metrics beside the process metrics: how its steps' hidden rows went
// to the next stage, and its calls' rows to its expert shards (over NCCL links or as bytes in the
// gRPC calls), and how often those links broke.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <memory>

#include "absl/status/statusor.h"

namespace deltaserve::services {

class StageMetrics {
 public:
  static absl::StatusOr<std::unique_ptr<StageMetrics>> Create(prometheus::Registry& registry);

  void HandedOn(bool over_nccl) { (over_nccl ? nccl_ : bytes_)->Increment(); }
  void LinkFailed() { link_failures_->Increment(); }

 private:
  StageMetrics(prometheus::Counter& nccl, prometheus::Counter& bytes, prometheus::Counter& link_failures)
      : nccl_(&nccl), bytes_(&bytes), link_failures_(&link_failures) {}
  prometheus::Counter* nccl_;
  prometheus::Counter* bytes_;
  prometheus::Counter* link_failures_;
};

class ExpertCallMetrics {
 public:
  static absl::StatusOr<std::unique_ptr<ExpertCallMetrics>> Create(prometheus::Registry& registry);

  void Called(bool over_nccl) { (over_nccl ? nccl_ : bytes_)->Increment(); }
  void LinkFailed() { link_failures_->Increment(); }

 private:
  ExpertCallMetrics(prometheus::Counter& nccl, prometheus::Counter& bytes, prometheus::Counter& link_failures)
      : nccl_(&nccl), bytes_(&bytes), link_failures_(&link_failures) {}
  prometheus::Counter* nccl_;
  prometheus::Counter* bytes_;
  prometheus::Counter* link_failures_;
};

}  // namespace deltaserve::services
