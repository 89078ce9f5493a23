// A stage worker's Prometheus metrics beside the process metrics: how its rows went to a peer, over
// an NCCL link or as bytes in the gRPC call, and how often a link broke; for the hidden rows it
// hands to the next stage (ForHandoffs) and for its calls to expert shards (ForExpertCalls).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace deltaserve::services {

class LinkPathMetrics {
 public:
  static absl::StatusOr<std::unique_ptr<LinkPathMetrics>> ForHandoffs(prometheus::Registry& registry);
  static absl::StatusOr<std::unique_ptr<LinkPathMetrics>> ForExpertCalls(prometheus::Registry& registry);

  void Went(bool over_nccl) { (over_nccl ? nccl_ : bytes_)->Increment(); }
  void LinkFailed() { link_failures_->Increment(); }

 private:
  static absl::StatusOr<std::unique_ptr<LinkPathMetrics>> Create(prometheus::Registry& registry,
                                                                  const std::string& paths,
                                                                  const std::string& paths_help,
                                                                  const std::string& failures,
                                                                  const std::string& failures_help);
  LinkPathMetrics(prometheus::Counter& nccl, prometheus::Counter& bytes, prometheus::Counter& link_failures)
      : nccl_(&nccl), bytes_(&bytes), link_failures_(&link_failures) {}
  prometheus::Counter* nccl_;
  prometheus::Counter* bytes_;
  prometheus::Counter* link_failures_;
};

}  // namespace deltaserve::services
