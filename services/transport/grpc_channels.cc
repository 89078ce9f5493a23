#include "services/transport/grpc_channels.h"

#include "services/common/grpc_status.h"

namespace deltaserve::services {
namespace {

template <typename Call>
absl::Status Invoke(std::chrono::milliseconds timeout, Call&& call) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  return FromGrpcStatus(call(&context));
}

// A ConnectNccl call that `cancel` (may be null) can end from another thread.
template <typename Call>
grpc::Status CancellableConnect(grpc::ClientContext* context, ConnectCancel* cancel, Call&& call) {
  if (cancel == nullptr) return call();
  cancel->Bind([context] { context->TryCancel(); });  // a cancel before the call ends it as it starts
  grpc::Status status = call();
  cancel->Unbind();
  return status;
}

void Fill(const WorkerDescription& d, internal::v1::DescribeResponse* response) {
  response->set_model_fingerprint(d.model_fingerprint);
  response->set_layer_begin(d.layer_begin);
  response->set_layer_end(d.layer_end);
  response->set_expert_begin(d.expert_begin);
  response->set_expert_end(d.expert_end);
  response->set_takes_page_reservations(d.takes_page_reservations);
}

WorkerDescription FromResponse(const internal::v1::DescribeResponse& r) {
  return {r.model_fingerprint(), r.layer_begin(), r.layer_end(), r.expert_begin(), r.expert_end(),
          r.takes_page_reservations()};
}

}  // namespace

GrpcStageChannel::GrpcStageChannel(std::shared_ptr<grpc::Channel> channel,
                                   std::chrono::milliseconds timeout)
    : stub_(internal::v1::StageWorker::NewStub(channel)), timeout_(timeout) {}

absl::Status GrpcStageChannel::Open(const internal::v1::OpenRequest& request,
                                    internal::v1::OpenResponse* response) {
  return Invoke(timeout_, [&](grpc::ClientContext* c) { return stub_->Open(c, request, response); });
}

absl::Status GrpcStageChannel::Step(const internal::v1::StepRequest& request,
                                    internal::v1::StepResponse* response) {
  return Invoke(timeout_, [&](grpc::ClientContext* c) { return stub_->Step(c, request, response); });
}

absl::Status GrpcStageChannel::Close(const internal::v1::CloseRequest& request,
                                     internal::v1::CloseResponse* response) {
  return Invoke(timeout_, [&](grpc::ClientContext* c) { return stub_->Close(c, request, response); });
}

absl::StatusOr<WorkerDescription> GrpcStageChannel::Describe() {
  internal::v1::DescribeResponse response;
  const absl::Status status = Invoke(timeout_, [&](grpc::ClientContext* c) {
    return stub_->Describe(c, internal::v1::DescribeRequest(), &response);
  });
  if (!status.ok()) return status;
  return FromResponse(response);
}

absl::Status GrpcStageChannel::ConnectNccl(const internal::v1::ConnectNcclRequest& request,
                                           std::chrono::milliseconds timeout, ConnectCancel* cancel) {
  internal::v1::ConnectNcclResponse response;
  return Invoke(timeout, [&](grpc::ClientContext* c) {
    return CancellableConnect(c, cancel, [&] { return stub_->ConnectNccl(c, request, &response); });
  });
}

GrpcExpertChannel::GrpcExpertChannel(std::shared_ptr<grpc::Channel> channel,
                                     std::chrono::milliseconds timeout)
    : stub_(internal::v1::ExpertWorker::NewStub(channel)), timeout_(timeout) {}

absl::Status GrpcExpertChannel::RunExperts(const internal::v1::RunExpertsRequest& request,
                                           internal::v1::RunExpertsResponse* response) {
  return Invoke(timeout_,
                [&](grpc::ClientContext* c) { return stub_->RunExperts(c, request, response); });
}

absl::Status GrpcExpertChannel::ConnectNccl(const internal::v1::ConnectNcclRequest& request,
                                            std::chrono::milliseconds timeout, ConnectCancel* cancel) {
  internal::v1::ConnectNcclResponse response;
  return Invoke(timeout, [&](grpc::ClientContext* c) {
    return CancellableConnect(c, cancel, [&] { return stub_->ConnectNccl(c, request, &response); });
  });
}

absl::StatusOr<WorkerDescription> GrpcExpertChannel::Describe() {
  internal::v1::DescribeResponse response;
  const absl::Status status = Invoke(timeout_, [&](grpc::ClientContext* c) {
    return stub_->Describe(c, internal::v1::DescribeRequest(), &response);
  });
  if (!status.ok()) return status;
  return FromResponse(response);
}

grpc::Status StageWorkerService::Open(grpc::ServerContext*, const internal::v1::OpenRequest* request,
                                      internal::v1::OpenResponse* response) {
  return ToInternalGrpcStatus(stage_.Open(*request, response));  // StageDeviceMemory for the router
}

grpc::Status StageWorkerService::Step(grpc::ServerContext*, const internal::v1::StepRequest* request,
                                      internal::v1::StepResponse* response) {
  return ToInternalGrpcStatus(stage_.Step(*request, response));  // HiddenRowsReceived for the caller
}

grpc::Status StageWorkerService::Close(grpc::ServerContext*, const internal::v1::CloseRequest* request,
                                       internal::v1::CloseResponse* response) {
  return ToGrpcStatus(stage_.Close(*request, response));
}

grpc::Status StageWorkerService::Describe(grpc::ServerContext*, const internal::v1::DescribeRequest*,
                                          internal::v1::DescribeResponse* response) {
  Fill(description_, response);
  return grpc::Status::OK;
}

grpc::Status StageWorkerService::ConnectNccl(grpc::ServerContext* context,
                                             const internal::v1::ConnectNcclRequest* request,
                                             internal::v1::ConnectNcclResponse*) {
  if (!connect_nccl_) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this stage takes no NCCL links");
  return ToGrpcStatus(connect_nccl_(*request, [context] { return context->IsCancelled(); }));
}

grpc::Status ExpertWorkerService::RunExperts(grpc::ServerContext*,
                                             const internal::v1::RunExpertsRequest* request,
                                             internal::v1::RunExpertsResponse* response) {
  return ToInternalGrpcStatus(experts_.RunExperts(*request, response));  // DeviceMemoryRanOut for the stage
}

grpc::Status ExpertWorkerService::Describe(grpc::ServerContext*, const internal::v1::DescribeRequest*,
                                           internal::v1::DescribeResponse* response) {
  Fill(description_, response);
  return grpc::Status::OK;
}

grpc::Status ExpertWorkerService::ConnectNccl(grpc::ServerContext* context,
                                              const internal::v1::ConnectNcclRequest* request,
                                              internal::v1::ConnectNcclResponse*) {
  if (!connect_nccl_) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this expert shard takes no NCCL links");
  return ToGrpcStatus(connect_nccl_(*request, [context] { return context->IsCancelled(); }));
}

}  // namespace deltaserve::services
