// A bounded multi-turn agentic workload against `deltaserve serve` and against the split cluster
// (session store, 2 expert workers, 2 stages, router), each started here as real processes:
// throughput, time to first token and inter-token latency percentiles, and the resume saving
// (a turn continuing a session from the store against sending the whole history again) at
// growing history lengths. Not a test: nothing is asserted; figures go to docs/.
//
//   build/bench/load_bench [--model=DIR] [--target=serve|cluster|both] [--conversations=8]
//                          [--turns=4] [--new-tokens=32] [--generate=16] [--history=256,1024,4096]
//                          [--pipeline-steps=1] (the cluster's router) [--device=cpu|cuda|cuda:N]
//                          (serve and every worker; on one GPU all of them share it)
//                          [--binary=PATH] (default: the deltaserve built beside it)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/channel.h"
#include "client/inference_client.h"
#include "model/checkpoint/random_checkpoint.h"
#include "model/config/model_source.h"
#include "model/config/presets.h"
#include "tests/testing/child_process.h"

namespace deltaserve::bench {
namespace {

using Clock = std::chrono::steady_clock;
using testing::ChildProcess;

struct Options {
  std::string model;
  std::string target = "both";
  int conversations = 8;
  int turns = 4;
  int new_tokens = 32;
  int generate = 16;
  std::vector<int> history = {256, 1024, 4096};
  int pipeline_steps = 1;
  std::string device = "cpu";
  std::string binary = DELTASERVE_BINARY;  // the deltaserve binary the processes run
};

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(p * (values.size() - 1) + 0.5));
  return values[index];
}

std::vector<int32_t> RandomTokens(int n, std::mt19937_64& rng, int vocab) {
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return tokens;
}

v1::GenerateRequest Request(const std::vector<int32_t>& prompt, int generate, uint64_t seed) {
  v1::GenerateRequest request;
  request.mutable_token_ids()->Assign(prompt.begin(), prompt.end());
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_seed(seed);
  request.mutable_stopping()->set_max_new_tokens(generate);
  request.mutable_stopping()->set_ignore_eos(true);
  return request;
}

// Starts the processes of a target; the first element serves the public API.
std::vector<std::unique_ptr<ChildProcess>> Launch(const std::string& target, const Options& o,
                                                  const std::string& store_dir) {
  const std::string& binary = o.binary;
  const std::string log = std::filesystem::temp_directory_path() / ("load-bench-" + target);
  std::vector<std::unique_ptr<ChildProcess>> processes;
  auto start = [&](const std::string& name, std::vector<std::string> args) -> ChildProcess& {
    processes.push_back(std::make_unique<ChildProcess>(binary, args, log + "-" + name + ".log", 120));
    if (!processes.back()->ok()) {
      std::fprintf(stderr, "%s did not start; see %s-%s.log\n", name.c_str(), log.c_str(), name.c_str());
      std::exit(1);
    }
    return *processes.back();
  };
  if (target == "serve") {
    start("serve", {"serve", "--model", o.model, "--device", o.device, "--listen", "127.0.0.1:0", "--store-dir",
                    store_dir, "--max-prompt-tokens", "65536", "--drain-seconds", "0"});
    return processes;
  }
  const auto config = model::LoadModelSourceConfig(o.model);
  const int64_t layers = config->num_layers, experts = config->num_experts;
  ChildProcess& store = start("store", {"session-store", "--data-dir", store_dir, "--listen", "127.0.0.1:0",
                                        "--drain-seconds", "0"});
  const std::string store_address = store.address();
  std::string shards;
  for (int64_t i = 0; i < 2; ++i) {
    ChildProcess& shard = start("experts" + std::to_string(i),
                                {"worker", "--role", "experts", "--experts",
                                 std::to_string(i * experts / 2) + "-" + std::to_string((i + 1) * experts / 2 - 1),
                                 "--model", o.model, "--device", o.device, "--listen", "127.0.0.1:0",
                                 "--drain-seconds", "0"});
    shards += (i ? "," : "") + shard.address();
  }
  const std::string split = std::to_string(layers / 2);
  ChildProcess& last = start("stage1", {"worker", "--role", "stage", "--layers",
                                        split + "-" + std::to_string(layers - 1), "--model", o.model,
                                        "--device", o.device, "--listen", "127.0.0.1:0", "--expert-workers", shards,
                                        "--session-store", store_address, "--drain-seconds", "0"});
  const std::string last_address = last.address();
  ChildProcess& first = start("stage0", {"worker", "--role", "stage", "--layers",
                                         "0-" + std::to_string(layers / 2 - 1), "--model", o.model,
                                         "--device", o.device, "--listen", "127.0.0.1:0", "--next", last_address,
                                         "--expert-workers", shards, "--session-store", store_address,
                                         "--drain-seconds", "0"});
  const std::string first_address = first.address();
  start("router", {"router", "--model", o.model, "--first-stage", first_address, "--session-store",
                   store_address, "--listen", "127.0.0.1:0", "--max-prompt-tokens", "65536",
                   "--pipeline-steps", std::to_string(o.pipeline_steps), "--drain-seconds", "0"});
  std::rotate(processes.begin(), processes.end() - 1, processes.end());  // router first
  return processes;
}

void RunWorkload(const std::string& target, const Options& o, int vocab) {
  const std::string store_dir = std::filesystem::temp_directory_path() / ("load-bench-store-" + target);
  std::filesystem::remove_all(store_dir);
  std::filesystem::create_directories(store_dir);
  std::vector<std::unique_ptr<ChildProcess>> processes = Launch(target, o, store_dir);
  client::InferenceClient client(client::MakeChannel(processes.front()->address()));

  std::mutex mutex;
  std::vector<double> ttft, itl, turn_ms;
  std::atomic<int64_t> generated = 0, failures = 0;
  std::string first_failure;
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < o.conversations; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937_64 rng(1000 + c);
      const std::string session = target + "-conversation-" + std::to_string(c);
      for (int turn = 0; turn < o.turns; ++turn) {
        v1::GenerateRequest request = Request(RandomTokens(o.new_tokens, rng, vocab), o.generate, rng());
        request.set_session_mode(turn == 0 ? v1::SESSION_MODE_CREATE : v1::SESSION_MODE_CONTINUE);
        request.set_session_id(session);
        std::vector<Clock::time_point> arrivals;
        const auto sent = Clock::now();
        auto result = client.Generate(request, [&](std::span<const int32_t> tokens) {
          for (size_t i = 0; i < tokens.size(); ++i) arrivals.push_back(Clock::now());
        });
        if (!result.ok()) {
          ++failures;
          std::lock_guard<std::mutex> lock(mutex);
          if (first_failure.empty()) first_failure = result.status().ToString();
          continue;
        }
        generated += static_cast<int64_t>(result->token_ids.size());
        std::lock_guard<std::mutex> lock(mutex);
        turn_ms.push_back(Ms(Clock::now() - sent));
        if (!arrivals.empty()) ttft.push_back(Ms(arrivals.front() - sent));
        for (size_t i = 1; i < arrivals.size(); ++i) itl.push_back(Ms(arrivals[i] - arrivals[i - 1]));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("\n## %s: %d conversations x %d turns, %d new tokens and %d generated per turn\n\n",
              target.c_str(), o.conversations, o.turns, o.new_tokens, o.generate);
  std::printf("| generated tokens/s | turns/s | failures | TTFT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms | turn p50 / p99 ms |\n");
  std::printf("|---|---|---|---|---|---|\n");
  std::printf("| %.1f | %.2f | %lld | %.1f / %.1f / %.1f | %.2f / %.2f / %.2f | %.1f / %.1f |\n",
              generated / seconds, turn_ms.size() / seconds, static_cast<long long>(failures.load()),
              Percentile(ttft, 0.5), Percentile(ttft, 0.9), Percentile(ttft, 0.99), Percentile(itl, 0.5),
              Percentile(itl, 0.9), Percentile(itl, 0.99), Percentile(turn_ms, 0.5), Percentile(turn_ms, 0.99));

  if (!first_failure.empty()) std::printf("\nFirst failure: %s\n", first_failure.c_str());
  std::printf("\nResume saving (%s): the next turn (16 new tokens, 1 generated) continuing a session\n"
              "from the store, against one request carrying the whole history. Median of 3.\n\n",
              target.c_str());
  std::printf("| history tokens | with the store ms | whole history ms | saving |\n|---|---|---|---|\n");
  std::mt19937_64 rng(7);
  for (int h : o.history) {
    const std::string session = target + "-history-" + std::to_string(h);
    std::vector<int32_t> history = RandomTokens(h, rng, vocab);
    v1::GenerateRequest create = Request(history, 1, 1);
    create.set_session_mode(v1::SESSION_MODE_CREATE);
    create.set_session_id(session);
    auto created = client.Generate(create);
    if (!created.ok()) {
      std::printf("| %d | failed: %s | | |\n", h, created.status().ToString().c_str());
      continue;
    }
    history.insert(history.end(), created->token_ids.begin(), created->token_ids.end());
    std::vector<double> resumed, whole;
    for (int rep = 0; rep < 3; ++rep) {
      const std::vector<int32_t> fresh = RandomTokens(16, rng, vocab);
      v1::GenerateRequest next = Request(fresh, 1, 2);
      next.set_session_mode(v1::SESSION_MODE_CONTINUE);
      next.set_session_id(session);
      auto t0 = Clock::now();
      auto continued = client.Generate(next);
      resumed.push_back(Ms(Clock::now() - t0));
      std::vector<int32_t> everything = history;
      everything.insert(everything.end(), fresh.begin(), fresh.end());
      t0 = Clock::now();
      auto recomputed = client.Generate(Request(everything, 1, 2));
      whole.push_back(Ms(Clock::now() - t0));
      if (!continued.ok() || !recomputed.ok()) break;
      history = everything;
      history.insert(history.end(), continued->token_ids.begin(), continued->token_ids.end());
    }
    const double r = Percentile(resumed, 0.5), w = Percentile(whole, 0.5);
    std::printf("| %d | %.1f | %.1f | %.1fx |\n", h, r, w, w / r);
  }
  std::fflush(stdout);
  processes.clear();
  std::filesystem::remove_all(store_dir);
}

}  // namespace
}  // namespace deltaserve::bench

int main(int argc, char** argv) {
  using deltaserve::bench::Options;
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string key = arg.substr(0, eq), value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (key == "--model") o.model = value;
    else if (key == "--target") o.target = value;
    else if (key == "--conversations") o.conversations = std::stoi(value);
    else if (key == "--turns") o.turns = std::stoi(value);
    else if (key == "--new-tokens") o.new_tokens = std::stoi(value);
    else if (key == "--generate") o.generate = std::stoi(value);
    else if (key == "--pipeline-steps") o.pipeline_steps = std::stoi(value);
    else if (key == "--device") o.device = value;
    else if (key == "--binary") o.binary = value;
    else if (key == "--history") {
      o.history.clear();
      std::stringstream list(value);
      std::string item;
      while (std::getline(list, item, ',')) o.history.push_back(std::stoi(item));
    } else {
      std::fprintf(stderr, "unknown flag %s\n", arg.c_str());
      return 2;
    }
  }
  if (o.model.empty()) {
    o.model = std::filesystem::temp_directory_path() / "deltaserve-bench-small";
    if (!std::filesystem::exists(o.model + "/config.json")) {
      const auto config = deltaserve::model::PresetConfig("small");
      if (!deltaserve::model::WriteRandomCheckpoint(*config, 0, o.model).ok()) return 1;
    }
  }
  const auto config = deltaserve::model::LoadModelSourceConfig(o.model);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 1;
  }
  std::printf("# deltaserve load benchmark, model %s, device %s, %u hardware threads, cluster pipeline steps %d\n",
              o.model.c_str(), o.device.c_str(), std::thread::hardware_concurrency(), o.pipeline_steps);
  for (const std::string target : {"serve", "cluster"}) {
    if (o.target == "both" || o.target == target) {
      deltaserve::bench::RunWorkload(target, o, static_cast<int>(config->vocab_size));
    }
  }
  return 0;
}
