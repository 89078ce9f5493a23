// One stage's hidden rows handed to the next stage on another GPU of the host, the two ways a
// stage worker hands them on (services/worker/stage_engine.cc), side by side in one run:
// - over an NCCL link (nccl_link.h): the rows in the sender's link buffer sent, received into
//   the receiver's, device to device;
// - as bytes over gRPC: downloaded to the host, sent as StepRequest.hidden to a StageWorker
//   service on loopback, uploaded to the receiver's GPU there (what a stage without a link does;
//   the service's message limit is raised to let the largest step through: the default 64 MiB
//   stops a step of more than 7,281 rows at hidden 2304).
// Beside them the ceiling: cudaMemcpyPeer of the same bytes between the two GPUs.
// Rows of the 48B's hidden size (2304 fp32 values). Prints one JSON line per case.
// Usage: cuda_stage_hop_bench [--rows N]... [--iters N]
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "bench/cuda/bench_support.h"
#include "services/common/server_runner.h"
#include "services/transport/grpc_channels.h"
#include "services/transport/nccl_link.h"

namespace {

using deltaserve::bench::Check;
using deltaserve::internal::v1::CloseRequest;
using deltaserve::internal::v1::CloseResponse;
using deltaserve::internal::v1::OpenRequest;
using deltaserve::internal::v1::OpenResponse;
using deltaserve::internal::v1::StepRequest;
using deltaserve::internal::v1::StepResponse;
using deltaserve::services::NcclLink;
using Clock = std::chrono::steady_clock;

constexpr int64_t kHidden = 2304;
constexpr int64_t kMaxRows = 8192;

// The receiving stage of the bytes path: uploads each step's rows to its GPU.
class UploadingStage final : public deltaserve::services::StageChannel {
 public:
  explicit UploadingStage(void* device_rows) : device_rows_(device_rows) {}
  absl::Status Open(const OpenRequest&, OpenResponse*) override { return absl::OkStatus(); }
  absl::Status Close(const CloseRequest&, CloseResponse*) override { return absl::OkStatus(); }
  absl::Status Step(const StepRequest& request, StepResponse*) override {
    Check(cudaSetDevice(1), "device 1");
    Check(cudaMemcpy(device_rows_, request.hidden().data(), request.hidden().size(), cudaMemcpyHostToDevice), "upload");
    return absl::OkStatus();
  }

 private:
  void* device_rows_;
};

template <typename Body>
double MeanMs(int iters, Body body) {
  body();
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < iters; ++i) body();
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count() / iters;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> row_counts;
  int iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--rows") == 0) row_counts.push_back(std::atoll(argv[i + 1]));
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
  }
  if (row_counts.empty()) row_counts = {1, 64, 1024, 4096, 8192};
  for (const int64_t rows : row_counts) {
    if (rows < 1 || rows > kMaxRows) {
      std::fprintf(stderr, "--rows %lld: 1 to %lld\n", static_cast<long long>(rows), static_cast<long long>(kMaxRows));
      return 1;
    }
  }
  int gpus = 0;
  Check(cudaGetDeviceCount(&gpus), "device count");
  if (gpus < 2) {
    std::fprintf(stderr, "cuda_stage_hop_bench needs two GPUs; this host has %d\n", gpus);
    return 1;
  }
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  const size_t capacity = static_cast<size_t>(kMaxRows * kHidden) * sizeof(float);

  absl::StatusOr<std::string> id = NcclLink::NewId();
  if (!id.ok()) {
    std::fprintf(stderr, "%s\n", id.status().ToString().c_str());
    return 1;
  }
  auto join = [&](int rank) { return NcclLink::Join(*id, rank, {.device = rank, .capacity_bytes = capacity}); };
  std::future<absl::StatusOr<std::unique_ptr<NcclLink>>> joining = std::async(std::launch::async, join, 1);
  absl::StatusOr<std::unique_ptr<NcclLink>> sender = join(0);
  absl::StatusOr<std::unique_ptr<NcclLink>> receiver = joining.get();
  if (!sender.ok() || !receiver.ok()) {
    std::fprintf(stderr, "join: %s / %s\n", sender.status().ToString().c_str(), receiver.status().ToString().c_str());
    return 1;
  }
  Check(cudaSetDevice(0), "device 0");
  Check(cudaMemset((*sender)->buffer(), 0x3c, capacity), "fill");

  void* uploaded = nullptr;
  Check(cudaSetDevice(1), "device 1");
  Check(cudaMalloc(&uploaded, capacity), "cudaMalloc");
  UploadingStage stage(uploaded);
  deltaserve::services::StageWorkerService service(stage, {});
  deltaserve::services::GrpcServerConfig config;
  config.listen_address = "127.0.0.1:0";
  config.max_receive_message_bytes = int64_t{256} << 20;
  grpc::Service* services[] = {&service};
  absl::StatusOr<std::unique_ptr<deltaserve::services::GrpcServer>> server =
      deltaserve::services::GrpcServer::Start(config, services);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  grpc::ChannelArguments arguments;
  arguments.SetMaxSendMessageSize(256 << 20);
  deltaserve::services::GrpcStageChannel next(
      grpc::CreateCustomChannel((*server)->address(), grpc::InsecureChannelCredentials(), arguments),
      std::chrono::seconds(60));
  std::vector<char> host(capacity);

  for (const int64_t rows : row_counts) {
    const size_t bytes = static_cast<size_t>(rows * kHidden) * sizeof(float);
    // The receiving side waits in a thread of its own, as a stage's gRPC handler would.
    std::atomic<int> posted{0}, received{0};
    std::thread receiving([&] {
      for (int i = 0; i <= iters; ++i) {
        while (posted.load() <= i) std::this_thread::yield();
        const absl::Status status = (*receiver)->Receive(bytes);
        if (!status.ok()) {
          std::fprintf(stderr, "nccl receive: %s\n", status.ToString().c_str());
          std::exit(1);
        }
        received.store(i + 1);
      }
    });
    int sent = 0;
    const double nccl_ms = MeanMs(iters, [&] {
      absl::Status status = (*sender)->StartSend(bytes);
      posted.store(++sent);
      if (status.ok()) status = (*sender)->FinishSend();
      if (!status.ok()) {
        std::fprintf(stderr, "nccl send: %s\n", status.ToString().c_str());
        std::exit(1);
      }
      while (received.load() < sent) std::this_thread::yield();
    });
    receiving.join();
    const double grpc_ms = MeanMs(iters, [&] {
      Check(cudaSetDevice(0), "device 0");
      Check(cudaMemcpy(host.data(), (*sender)->buffer(), bytes, cudaMemcpyDeviceToHost), "download");
      StepRequest request;
      request.set_hidden(host.data(), bytes);
      StepResponse response;
      const absl::Status status = next.Step(request, &response);
      if (!status.ok()) {
        std::fprintf(stderr, "grpc: %s\n", status.ToString().c_str());
        std::exit(1);
      }
    });
    const double peer_ms = MeanMs(iters, [&] {
      Check(cudaMemcpyPeer((*receiver)->buffer(), 1, (*sender)->buffer(), 0, bytes), "peer copy");
      Check(cudaDeviceSynchronize(), "sync");
    });
    const double gb = static_cast<double>(bytes) / 1e9;
    std::printf("{\"gpu\": \"%s\", \"case\": \"stage_hop\", \"rows\": %lld, \"mb\": %.2f, \"nccl_ms\": %.4f, "
                "\"grpc_bytes_ms\": %.4f, \"peer_copy_ms\": %.4f, \"nccl_gb_per_s\": %.1f, \"grpc_gb_per_s\": %.2f, "
                "\"peer_gb_per_s\": %.1f, \"grpc_over_nccl\": %.1f}\n",
                prop.name, static_cast<long long>(rows), bytes / 1e6, nccl_ms, grpc_ms, peer_ms, gb / (nccl_ms * 1e-3),
                gb / (grpc_ms * 1e-3), gb / (peer_ms * 1e-3), grpc_ms / nccl_ms);
    std::fflush(stdout);
  }
  return 0;
}
