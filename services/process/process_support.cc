#include "services/process/process_support.h"

#include <charconv>
#include <utility>

#include <grpcpp/create_channel.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "services/common/metrics.h"
#include "services/worker/engine_memory_metrics.h"

namespace deltaserve::services {

absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetrics(const std::string& listen,
                                                            const std::string& role) {
  if (listen.empty()) return std::unique_ptr<MetricsServer>();
  DS_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> server, MetricsServer::Start(listen));
  DS_RETURN_IF_ERROR(RegisterProcessMetrics(server->registry(), {"0.1.0", role},
                                            std::chrono::system_clock::now()));
  return server;
}

absl::StatusOr<std::unique_ptr<kernels::Backend>> MakeBackend(const kernels::BackendChoice& choice) {
  std::string error;
  std::unique_ptr<kernels::Backend> backend = kernels::CreateBackend(choice, &error);
  if (backend == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("--device ", choice.device, ": ", error));
  }
  return backend;
}

std::shared_ptr<void> WatchEngineMemory(MetricsServer& metrics, std::shared_ptr<const kernels::Backend> backend) {
  auto collectable = std::make_shared<EngineMemoryMetrics>(std::move(backend));
  metrics.AddCollectable(collectable);
  return collectable;
}

std::shared_ptr<grpc::Channel> InternalChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 30);
  args.SetMaxSendMessageSize(1 << 30);
  // Each worker link gets its own connection, so one busy peer never queues behind another.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

absl::Status WaitForPeer(const std::shared_ptr<grpc::Channel>& channel, const std::string& what,
                         std::chrono::milliseconds timeout) {
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + timeout)) {
    return absl::UnavailableError(absl::StrCat(what, " did not answer within ", timeout.count(), " ms"));
  }
  return absl::OkStatus();
}

absl::StatusOr<IndexRange> ParseInclusiveRange(const std::string& text, const std::string& flag) {
  const auto parse = [&](std::string_view part, int64_t* value) {
    const auto [end, error] = std::from_chars(part.data(), part.data() + part.size(), *value);
    return !part.empty() && error == std::errc() && end == part.data() + part.size() && *value >= 0;
  };
  const size_t dash = text.find('-');
  int64_t first = 0, last = 0;
  const std::string_view whole(text);
  const bool ok = dash == std::string::npos
                      ? parse(whole, &first) && (last = first, true)
                      : parse(whole.substr(0, dash), &first) && parse(whole.substr(dash + 1), &last);
  if (!ok || last < first) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": '", text,
                                                   "' is not a range such as 0-13 (first-last)"));
  }
  return IndexRange{first, last + 1};
}

}  // namespace deltaserve::services
