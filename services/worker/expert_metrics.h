// An expert worker's Prometheus metrics beside the process metrics: the calls it answered, by how
// their rows came (over an NCCL link or as bytes in the gRPC call), the calls it failed, and the
// NCCL links it holds. CountedExperts counts the calls of the channel it wraps.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <memory>

#include "absl/status/statusor.h"
#include "services/transport/expert_channel.h"

namespace deltaserve::services {

class ExpertMetrics {
 public:
  static absl::StatusOr<std::unique_ptr<ExpertMetrics>> Create(prometheus::Registry& registry);

  void Answered(bool over_nccl) { (over_nccl ? nccl_ : bytes_)->Increment(); }
  void Failed() { failures_->Increment(); }
  void HoldsLinks(int links) { links_->Set(links); }

 private:
  ExpertMetrics(prometheus::Counter& nccl, prometheus::Counter& bytes, prometheus::Counter& failures,
                prometheus::Gauge& links)
      : nccl_(&nccl), bytes_(&bytes), failures_(&failures), links_(&links) {}
  prometheus::Counter* nccl_;
  prometheus::Counter* bytes_;
  prometheus::Counter* failures_;
  prometheus::Gauge* links_;
};

class CountedExperts final : public ExpertChannel {
 public:
  CountedExperts(ExpertChannel& experts, ExpertMetrics& metrics) : experts_(experts), metrics_(metrics) {}
  absl::Status RunExperts(const internal::v1::RunExpertsRequest& request,
                          internal::v1::RunExpertsResponse* response) override {
    const absl::Status status = experts_.RunExperts(request, response);
    if (status.ok()) {
      metrics_.Answered(request.hidden_link() != 0);
    } else {
      metrics_.Failed();
    }
    return status;
  }

 private:
  ExpertChannel& experts_;
  ExpertMetrics& metrics_;
};

}  // namespace deltaserve::services
