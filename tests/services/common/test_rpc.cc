// Helpers for services_common_test: raw gRPC calls, the echo service, and a socket HTTP GET.
#include "tests/services/common/test_rpc.h"

#include <arpa/inet.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "services/common/grpc_status.h"
#include "services/common/request_context.h"

namespace deltaserve::services::common_testing {
namespace {

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

// Waits for `tag` on `cq`; false when the operation failed (or another tag came).
bool Await(grpc::CompletionQueue& cq, void* tag) {
  void* got = nullptr;
  bool ok = false;
  if (!cq.Next(&got, &ok)) return false;
  return ok && got == tag;
}

}  // namespace

grpc::Status EchoStageWorker::Describe(grpc::ServerContext* context,
                                       const deltaserve::internal::v1::DescribeRequest*,
                                       deltaserve::internal::v1::DescribeResponse* response) {
  const absl::StatusOr<base::RequestContext> request =
      RequestContextOf(*context, config_, "describe");
  if (!request.ok()) return ToGrpcStatus(request.status());
  {
    absl::MutexLock lock(&mu_);
    last_deadline_ = request->deadline;
  }
  response->set_model_fingerprint(request->tenant);
  return grpc::Status::OK;
}

grpc::Status EchoStageWorker::Step(grpc::ServerContext*,
                                   const deltaserve::internal::v1::StepRequest*,
                                   deltaserve::internal::v1::StepResponse*) {
  return grpc::Status::OK;
}

std::chrono::system_clock::time_point EchoStageWorker::last_deadline() const {
  absl::MutexLock lock(&mu_);
  return last_deadline_;
}

std::shared_ptr<grpc::Channel> InsecureChannel(const std::string& address) {
  return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& request, std::string* response) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::CompletionQueue cq;
  grpc::ByteBuffer reply;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
      stub.PrepareUnaryCall(&context, method, ToByteBuffer(request), &cq);
  call->StartCall();
  int tag = 0;
  call->Finish(&reply, &status, &tag);
  if (!Await(cq, &tag)) return grpc::Status(grpc::StatusCode::INTERNAL, "completion queue failed");
  if (status.ok()) *response = FromByteBuffer(reply);
  return status;
}

absl::StatusOr<int> HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& service) {
  google::protobuf::UnknownFieldSet request;  // HealthCheckRequest{service = 1}
  request.AddLengthDelimited(1, service);
  std::string request_bytes;
  request.SerializeToString(&request_bytes);
  std::string response_bytes;
  const grpc::Status status =
      RawUnaryCall(channel, "/grpc.health.v1.Health/Check", request_bytes, &response_bytes);
  if (!status.ok()) return FromGrpcStatus(status);
  google::protobuf::UnknownFieldSet response;  // HealthCheckResponse{status = 1}
  if (!response.ParseFromString(response_bytes)) {
    return absl::DataLossError("unparsable HealthCheckResponse");
  }
  for (int i = 0; i < response.field_count(); ++i) {
    if (response.field(i).number() == 1) return static_cast<int>(response.field(i).varint());
  }
  return 0;  // proto3 default: UNKNOWN
}

absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::CompletionQueue cq;
  int start = 0, write = 0, writes_done = 0, read = 0, finish = 0;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  call->StartCall(&start);
  if (!Await(cq, &start)) return absl::UnavailableError("reflection call did not start");
  google::protobuf::UnknownFieldSet request;  // ServerReflectionRequest{list_services = 7}
  request.AddLengthDelimited(7, "*");
  std::string request_bytes;
  request.SerializeToString(&request_bytes);
  call->Write(ToByteBuffer(request_bytes), &write);
  if (!Await(cq, &write)) return absl::UnavailableError("reflection write failed");
  call->WritesDone(&writes_done);
  if (!Await(cq, &writes_done)) return absl::UnavailableError("reflection writes-done failed");
  grpc::ByteBuffer reply;
  call->Read(&reply, &read);
  const bool got_reply = Await(cq, &read);
  grpc::Status status;
  call->Finish(&status, &finish);
  if (!Await(cq, &finish)) return absl::InternalError("reflection finish failed");
  if (!status.ok()) return FromGrpcStatus(status);
  if (!got_reply) return absl::NotFoundError("reflection sent no response");

  google::protobuf::UnknownFieldSet response;
  if (!response.ParseFromString(FromByteBuffer(reply))) {
    return absl::DataLossError("unparsable ServerReflectionResponse");
  }
  std::vector<std::string> names;
  for (int i = 0; i < response.field_count(); ++i) {
    if (response.field(i).number() != 6) continue;  // list_services_response
    google::protobuf::UnknownFieldSet list;
    if (!list.ParseFromString(response.field(i).length_delimited())) continue;
    for (int j = 0; j < list.field_count(); ++j) {
      if (list.field(j).number() != 1) continue;  // repeated ServiceResponse service
      google::protobuf::UnknownFieldSet service;
      if (!service.ParseFromString(list.field(j).length_delimited())) continue;
      for (int k = 0; k < service.field_count(); ++k) {
        if (service.field(k).number() == 1) names.push_back(service.field(k).length_delimited());
      }
    }
  }
  return names;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect: ", std::strerror(error)));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return absl::UnavailableError("send failed");
    }
    sent += static_cast<size_t>(n);
  }
  std::string answer;
  char buffer[8192];
  while (true) {
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return absl::UnavailableError("recv failed");
    }
    if (n == 0) break;
    answer.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t header_end = answer.find("\r\n\r\n");
  if (header_end == std::string::npos) return absl::DataLossError("no HTTP header end");
  const std::string status_line = answer.substr(0, answer.find("\r\n"));
  if (!absl::StrContains(status_line, " 200 ")) {
    return absl::UnavailableError(absl::StrCat("HTTP status: ", status_line));
  }
  return answer.substr(header_end + 4);
}

}  // namespace deltaserve::services::common_testing
