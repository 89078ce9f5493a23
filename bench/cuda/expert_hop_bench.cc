// One MoE layer's routed experts run by expert shards on another GPU of the host, the two ways a
// stage worker calls them (services/worker/remote_expert_runner.h), side by side in one run:
// - over NCCL links (one per shard): the tokens' rows gathered into each link's buffer and sent
//   device to device, the slots' outputs sent back the same way;
// - as bytes over gRPC: the rows downloaded to the host and sent in RunExpertsRequest.hidden,
//   the outputs returned in the response and uploaded.
// The 48B's shape (hidden 2304, 256 experts of inner 1024, top 8): the stage on GPU 0, two shards
// of 128 experts each on GPU 1 behind gRPC services on loopback (their message limit raised so
// that the largest call goes through as bytes), random routing. Each case also times the same
// tokens' experts run on GPU 0 itself (Backend::MoeExperts), what a stage holding them would do.
// Prints one JSON line per token count.
// Usage: cuda_expert_hop_bench [--tokens N]... [--iters N]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "kernels/backend_factory.h"
#include "model/checkpoint/checkpoint.h"
#include "model/config/presets.h"
#include "model/layers/layer_weights.h"
#include "services/common/server_runner.h"
#include "services/transport/grpc_channels.h"
#include "services/worker/expert_shard.h"
#include "services/worker/nccl_expert_links.h"
#include "services/worker/remote_expert_runner.h"

namespace {

namespace ds = deltaserve;
using Clock = std::chrono::steady_clock;

constexpr int64_t kMaxRows = 8192;
constexpr int kLayer = 1;  // the cut preset's first MoE layer

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "cuda_expert_hop_bench: %s\n", what.c_str());
  std::exit(1);
}

void Ok(const absl::Status& status, const char* what) {
  if (!status.ok()) Fail(std::string(what) + ": " + status.ToString());
}

// The 48B preset's first two layers (a dense one, then MoE), weights made in memory.
std::unique_ptr<ds::model::Checkpoint> Layers() {
  absl::StatusOr<ds::model::KimiLinearConfig> config = ds::model::PresetConfig("kimi-linear-48b-a3b");
  Ok(config.status(), "preset");
  config->num_layers = 2;
  config->mixer_kinds.resize(2);
  config->ffn_kinds.resize(2);
  absl::StatusOr<std::unique_ptr<ds::model::Checkpoint>> checkpoint =
      ds::model::Checkpoint::OpenRandom(*config, 1, "random:kimi-linear-48b-a3b (first 2 layers)");
  Ok(checkpoint.status(), "checkpoint");
  return std::move(*checkpoint);
}

std::unique_ptr<ds::kernels::Backend> Gpu(int device) {
  std::string why;
  auto backend = ds::kernels::CreateBackend({.device = "cuda", .cuda_device = device}, &why);
  if (backend == nullptr) Fail("GPU " + std::to_string(device) + ": " + why);
  return backend;
}

// An expert shard on GPU 1 behind its own gRPC service, taking NCCL links.
struct Shard {
  std::unique_ptr<ds::services::ExpertShard> shard;
  std::unique_ptr<ds::services::NcclExpertLinks> links;
  std::unique_ptr<ds::services::ExpertWorkerService> service;
  std::unique_ptr<ds::services::GrpcServer> server;
  std::shared_ptr<ds::services::GrpcExpertChannel> channel;
  std::unique_ptr<ds::services::NcclOutputLink> link;
};

template <typename Body>
double MeanMs(int iters, Body body) {
  body();  // warm-up
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < iters; ++i) body();
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count() / iters;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> token_counts;
  int iters = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::max(1, std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--tokens") == 0) {
      const int64_t tokens = std::atoll(argv[i + 1]);
      if (tokens < 1 || tokens > kMaxRows) Fail("--tokens: 1 to " + std::to_string(kMaxRows));
      token_counts.push_back(tokens);
    }
  }
  if (token_counts.empty()) token_counts = {1, 8, 64, 512, 4096};
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 2) {
    Fail("needs two GPUs; this host has " + std::to_string(gpus));
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::unique_ptr<ds::kernels::Backend> gpu0 = Gpu(0), gpu1 = Gpu(1);

  const std::unique_ptr<ds::model::Checkpoint> config_source = Layers();
  const ds::model::KimiLinearConfig config = config_source->config();
  const int64_t hidden = config.hidden_size, k = config.num_experts_per_token;
  const size_t capacity = static_cast<size_t>(kMaxRows * hidden) * sizeof(float);
  const std::chrono::milliseconds timeout(30000);
  std::vector<Shard> shards(2);
  std::vector<ds::services::ExpertShardLink> linked, plain;
  for (int s = 0; s < 2; ++s) {
    const int64_t begin = s * config.num_experts / 2, end = (s + 1) * config.num_experts / 2;
    Shard& shard = shards[s];
    auto loaded = ds::services::ExpertShard::Load(Layers(), *gpu1, begin, end);
    Ok(loaded.status(), "shard");
    shard.shard = std::move(*loaded);
    shard.links = std::make_unique<ds::services::NcclExpertLinks>(
        *shard.shard, *gpu1, ds::services::NcclExpertLinkLimits{1, capacity, 4, timeout});
    ds::services::NcclExpertLinks* links = shard.links.get();
    shard.service = std::make_unique<ds::services::ExpertWorkerService>(
        *shard.links, ds::services::WorkerDescription{},
        [links](const ds::internal::v1::ConnectNcclRequest& request, const std::function<bool()>& give_up) {
          return links->Connect(request, give_up);
        });
    ds::services::GrpcServerConfig server_config;
    server_config.listen_address = "127.0.0.1:0";
    server_config.max_receive_message_bytes = int64_t{1} << 30;
    server_config.max_send_message_bytes = int64_t{1} << 30;
    grpc::Service* services[] = {shard.service.get()};
    auto server = ds::services::GrpcServer::Start(server_config, services);
    Ok(server.status(), "server");
    shard.server = std::move(*server);
    grpc::ChannelArguments arguments;
    arguments.SetMaxSendMessageSize(1 << 30);
    arguments.SetMaxReceiveMessageSize(1 << 30);
    shard.channel = std::make_shared<ds::services::GrpcExpertChannel>(
        grpc::CreateCustomChannel(shard.server->address(), grpc::InsecureChannelCredentials(), arguments), timeout);
    ds::services::NcclOutputLinkOptions link_options;
    link_options.capacity_bytes = capacity;
    link_options.timeout = timeout;
    link_options.both_ways = true;
    shard.link = std::make_unique<ds::services::NcclOutputLink>(shard.channel, "shard", link_options);
    Ok(shard.link->status(), "link");
    linked.push_back({begin, end, shard.channel.get(), 0, shard.link.get()});
    plain.push_back({begin, end, shard.channel.get(), 0, nullptr});
  }
  ds::services::RemoteExpertRunner over_links(*gpu0, linked, hidden);
  ds::services::RemoteExpertRunner as_bytes(*gpu0, plain, hidden);
  // The same experts on GPU 0, for the time a stage holding them takes.
  ds::model::WeightScope experts_only;
  experts_only.load_dense = false;
  auto local_weights = ds::model::LoadModelWeights(*config_source, *gpu0, experts_only);
  Ok(local_weights.status(), "local weights");
  const ds::model::MoeWeights& local = local_weights->layer(kLayer).moe;

  std::mt19937 random(7);
  for (const int64_t tokens : token_counts) {
    std::vector<float> host_x(static_cast<size_t>(tokens * hidden));
    std::normal_distribution<float> normal;
    for (float& v : host_x) v = normal(random);
    std::vector<int32_t> host_ids(static_cast<size_t>(tokens * k));
    std::vector<int32_t> experts(static_cast<size_t>(config.num_experts));
    std::iota(experts.begin(), experts.end(), 0);
    for (int64_t t = 0; t < tokens; ++t) {
      std::shuffle(experts.begin(), experts.end(), random);
      std::copy_n(experts.begin(), k, host_ids.begin() + t * k);
    }
    ds::kernels::Tensor x = gpu0->Allocate(tokens, hidden, ds::kernels::DType::kF32);
    gpu0->Upload(host_x.data(), x.view());
    ds::kernels::Tensor ids = gpu0->Allocate(tokens, k, ds::kernels::DType::kI32);
    gpu0->Upload(host_ids.data(), ids.view());
    ds::kernels::Tensor slots = gpu0->Allocate(tokens * k, hidden, ds::kernels::DType::kF32);
    ds::kernels::Tensor check = gpu0->Allocate(tokens * k, hidden, ds::kernels::DType::kF32);
    auto run = [&](ds::services::RemoteExpertRunner& runner, ds::kernels::Tensor& out) {
      Ok(runner.RunExperts(kLayer, x.view(), ids.view(), out.view()), "run experts");
      gpu0->Synchronize();
    };
    const double nccl_ms = MeanMs(iters, [&] { run(over_links, slots); });
    const double bytes_ms = MeanMs(iters, [&] { run(as_bytes, check); });
    const double local_ms = MeanMs(iters, [&] {
      gpu0->MoeExperts(x.view(), ids.view(), local.experts, local.first_expert, check.view());
      gpu0->Synchronize();
    });
    // Both paths run the same kernels on the same rows: the outputs agree bit for bit.
    run(as_bytes, check);
    std::vector<float> a(static_cast<size_t>(tokens * k * hidden)), b(a.size());
    gpu0->Download(slots.view(), a.data());
    gpu0->Download(check.view(), b.data());
    if (std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) != 0) Fail("NCCL and bytes outputs differ");
    // Rows out: each shard's tokens (those routed to it at least once); back: every slot's output.
    int64_t rows_out = 0;
    for (const ds::services::ExpertShardLink& shard : linked) {
      for (const ds::services::ExpertCall& call :
           ds::services::PlanExpertCalls(host_ids.data(), tokens, k, shard.expert_begin, shard.expert_end, 0)) {
        rows_out += static_cast<int64_t>(call.tokens.size());
      }
    }
    std::printf("{\"gpu\": \"%s\", \"case\": \"expert_hop\", \"tokens\": %lld, \"mb_out\": %.2f, "
                "\"mb_back\": %.2f, \"nccl_ms\": %.4f, \"grpc_bytes_ms\": %.4f, \"local_ms\": %.4f, "
                "\"bytes_over_nccl\": %.2f}\n",
                prop.name, static_cast<long long>(tokens), rows_out * hidden * 4.0 / 1e6,
                tokens * k * hidden * 4.0 / 1e6, nccl_ms, bytes_ms, local_ms, bytes_ms / nccl_ms);
    std::fflush(stdout);
  }
  return 0;
}
