// Helpers for services_common_test: a trivial StageWorker service, gRPC calls without generated
// stubs (Debian ships no client headers for grpc.health.v1 or reflection), and an HTTP GET.
#pragma once

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "deltaserve/internal/v1/worker.grpc.pb.h"
#include "services/common/server_config.h"

namespace deltaserve::services::common_testing {

// Describe answers with the call's tenant as model_fingerprint and records the call's
// effective deadline (both through RequestContextOf); Step accepts anything.
class EchoStageWorker final : public deltaserve::internal::v1::StageWorker::Service {
 public:
  explicit EchoStageWorker(GrpcServerConfig config) : config_(std::move(config)) {}

  grpc::Status Describe(grpc::ServerContext* context,
                        const deltaserve::internal::v1::DescribeRequest* request,
                        deltaserve::internal::v1::DescribeResponse* response) override;
  grpc::Status Step(grpc::ServerContext* context,
                    const deltaserve::internal::v1::StepRequest* request,
                    deltaserve::internal::v1::StepResponse* response) override;

  std::chrono::system_clock::time_point last_deadline() const;

 private:
  const GrpcServerConfig config_;
  mutable absl::Mutex mu_;
  std::chrono::system_clock::time_point last_deadline_ ABSL_GUARDED_BY(mu_);
};

std::shared_ptr<grpc::Channel> InsecureChannel(const std::string& address);

// One unary call of `method` ("/pkg.Service/Method") with serialized request/response bytes.
grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& request, std::string* response);

// grpc.health.v1.Health/Check: the ServingStatus number (1 SERVING, 2 NOT_SERVING), or the
// call's error (NOT_FOUND for a service the health service does not know).
absl::StatusOr<int> HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& service);

// Lists services through grpc.reflection.v1alpha.ServerReflection (a bidi stream).
absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel);

// GET http://127.0.0.1:<port><path> over a plain socket (HTTP/1.0): the body of a 200 answer.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

}  // namespace deltaserve::services::common_testing
