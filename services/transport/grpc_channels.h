// The gRPC side of the worker transports: clients that implement StageChannel / ExpertChannel
// over a grpc::Channel, and services that expose an in-process StageChannel / ExpertChannel.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "deltaserve/internal/v1/worker.grpc.pb.h"
#include "services/transport/expert_channel.h"
#include "services/transport/nccl_peer.h"
#include "services/transport/stage_channel.h"

namespace deltaserve::services {

// What a worker tells callers about itself (checked when the cluster is wired up).
struct WorkerDescription {
  std::string model_fingerprint;  // hex
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  int64_t expert_begin = 0;
  int64_t expert_end = 0;
  bool takes_page_reservations = false;  // DescribeResponse's
};

class GrpcStageChannel final : public StageChannel, public NcclPeer {
 public:
  GrpcStageChannel(std::shared_ptr<grpc::Channel> channel, std::chrono::milliseconds timeout);
  absl::Status Open(const internal::v1::OpenRequest& request,
                    internal::v1::OpenResponse* response) override;
  absl::Status Step(const internal::v1::StepRequest& request,
                    internal::v1::StepResponse* response) override;
  absl::Status Close(const internal::v1::CloseRequest& request,
                     internal::v1::CloseResponse* response) override;
  absl::StatusOr<WorkerDescription> Describe();
  absl::Status Answer() override { return Describe().status(); }
  absl::Status ConnectNccl(const internal::v1::ConnectNcclRequest& request, std::chrono::milliseconds timeout,
                           ConnectCancel* cancel) override;

 private:
  std::unique_ptr<internal::v1::StageWorker::Stub> stub_;
  std::chrono::milliseconds timeout_;
};

class GrpcExpertChannel final : public ExpertChannel, public NcclPeer {
 public:
  GrpcExpertChannel(std::shared_ptr<grpc::Channel> channel, std::chrono::milliseconds timeout);
  absl::Status RunExperts(const internal::v1::RunExpertsRequest& request,
                          internal::v1::RunExpertsResponse* response) override;
  absl::StatusOr<WorkerDescription> Describe();
  absl::Status Answer() override { return Describe().status(); }
  absl::Status ConnectNccl(const internal::v1::ConnectNcclRequest& request, std::chrono::milliseconds timeout,
                           ConnectCancel* cancel) override;

 private:
  std::unique_ptr<internal::v1::ExpertWorker::Stub> stub_;
  std::chrono::milliseconds timeout_;
};

class StageWorkerService final : public internal::v1::StageWorker::Service {
 public:
  // `connect_nccl` joins the links of ConnectNccl; without it ConnectNccl is Unimplemented. Its
  // give-up says when the caller has gone (cancelled, past its deadline, or the server stopping):
  // the joining side's waits end then rather than at the link's timeout.
  using ConnectNcclHandler =
      std::function<absl::Status(const internal::v1::ConnectNcclRequest&, const std::function<bool()>& give_up)>;
  StageWorkerService(StageChannel& stage, WorkerDescription description, ConnectNcclHandler connect_nccl = {})
      : stage_(stage), description_(std::move(description)), connect_nccl_(std::move(connect_nccl)) {}
  grpc::Status Open(grpc::ServerContext*, const internal::v1::OpenRequest* request,
                    internal::v1::OpenResponse* response) override;
  grpc::Status Step(grpc::ServerContext*, const internal::v1::StepRequest* request,
                    internal::v1::StepResponse* response) override;
  grpc::Status Close(grpc::ServerContext*, const internal::v1::CloseRequest* request,
                     internal::v1::CloseResponse* response) override;
  grpc::Status Describe(grpc::ServerContext*, const internal::v1::DescribeRequest*,
                        internal::v1::DescribeResponse* response) override;
  grpc::Status ConnectNccl(grpc::ServerContext*, const internal::v1::ConnectNcclRequest* request,
                           internal::v1::ConnectNcclResponse*) override;

 private:
  StageChannel& stage_;
  WorkerDescription description_;
  ConnectNcclHandler connect_nccl_;
};

class ExpertWorkerService final : public internal::v1::ExpertWorker::Service {
 public:
  // `connect_nccl` as StageWorkerService's.
  using ConnectNcclHandler = StageWorkerService::ConnectNcclHandler;
  ExpertWorkerService(ExpertChannel& experts, WorkerDescription description, ConnectNcclHandler connect_nccl = {})
      : experts_(experts), description_(std::move(description)), connect_nccl_(std::move(connect_nccl)) {}
  grpc::Status RunExperts(grpc::ServerContext*, const internal::v1::RunExpertsRequest* request,
                          internal::v1::RunExpertsResponse* response) override;
  grpc::Status Describe(grpc::ServerContext*, const internal::v1::DescribeRequest*,
                        internal::v1::DescribeResponse* response) override;
  grpc::Status ConnectNccl(grpc::ServerContext*, const internal::v1::ConnectNcclRequest* request,
                           internal::v1::ConnectNcclResponse*) override;

 private:
  ExpertChannel& experts_;
  WorkerDescription description_;
  ConnectNcclHandler connect_nccl_;
};

}  // namespace deltaserve::services
