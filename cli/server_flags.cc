#include "cli/server_flags.h"

#include <csignal>
#include <cstdio>

#include "cli/engine.h"

namespace deltaserve::cli {

void AddServerFlags(CLI::App& command, ServerFlags& flags, const std::string& default_listen) {
  services::GrpcServerConfig& server = flags.process.server;
  server.listen_address = default_listen;
  command.add_option("--listen", server.listen_address, "gRPC address (host:port; port 0 picks one)")
      ->capture_default_str();
  command.add_option("--metrics-listen", flags.process.metrics_listen,
                     "Prometheus /metrics address (host:port); empty: none");
  command.add_option("--max-receive-message-bytes", server.max_receive_message_bytes)
      ->capture_default_str();
  command.add_option("--max-send-message-bytes", server.max_send_message_bytes,
                     "Largest reply (workers answer a step with one message)")
      ->capture_default_str();
  command.add_option("--max-metadata-bytes", server.max_metadata_bytes)->capture_default_str();
  command.add_option("--max-concurrent-streams", server.max_concurrent_streams,
                     "Concurrent streams per connection")
      ->capture_default_str();
  command.add_option("--keepalive-min-ping-interval-ms", server.min_ping_interval_ms,
                     "Client pings closer than this are strikes")
      ->capture_default_str();
  command.add_option("--default-deadline-ms", server.default_deadline_ms,
                     "Deadline of a call whose client sets none")
      ->capture_default_str();
  command.add_option("--log-level", flags.log_level, "trace|debug|info|warn|error|critical|off")
      ->capture_default_str();
  command.add_option("--drain-seconds", flags.drain_seconds,
                     "At shutdown, how long calls in flight may finish")
      ->check(CLI::Range(int64_t{0}, int64_t{86'400}))
      ->capture_default_str();
  command.add_option("--peer-wait-ms", flags.peer_wait_ms, "How long to wait for peers at start")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}))
      ->capture_default_str();
  command.add_option("--call-timeout-ms", flags.call_timeout_ms, "Deadline of one internal call")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}))
      ->capture_default_str();
}

void AddRouterFlags(CLI::App& command, services::RouterConfig& router) {
  command.add_option("--max-running", router.max_running, "Sequences in the running batch")
      ->capture_default_str();
  command.add_option("--max-waiting", router.max_waiting,
                     "Queued requests before Generate fails with RESOURCE_EXHAUSTED")
      ->capture_default_str();
  command.add_option("--max-step-tokens", router.planner.max_step_tokens, "Token budget of one step")
      ->capture_default_str();
  command.add_option("--prefill-chunk", router.planner.max_prefill_chunk,
                     "Largest prefill piece of one sequence per step")
      ->capture_default_str();
  command.add_option("--max-prompt-tokens", router.max_prompt_tokens, "Tokens one request may send")
      ->capture_default_str();
  command.add_option("--max-new-tokens-limit", router.max_new_tokens_limit,
                     "The largest max_new_tokens accepted")
      ->capture_default_str();
  command.add_option("--default-max-new-tokens", router.default_max_new_tokens)->capture_default_str();
  command.add_option("--session-transfer-threads", router.session_transfer_threads,
                     "Session turns saved at once, and continued ones opened at once (each)")
      ->capture_default_str();
  command.add_option("--pipeline-steps", router.pipeline_steps,
                     "Steps in flight down the stage pipeline at once (the number of stages keeps each busy)")
      ->capture_default_str();
  command.add_option("--max-preemptions", router.max_preemptions,
                     "Times one request may give its state back when device memory runs out (it is computed "
                     "again later); once more ends it with RESOURCE_EXHAUSTED")
      ->capture_default_str();
}

void AddStoreFlags(CLI::App& command, services::SnapshotStoreOptions& store, const std::string& prefix) {
  command.add_option("--" + prefix + "memory-bytes", store.memory_limit_bytes,
                     "Byte limit of the session store's memory tier")
      ->capture_default_str();
  command.add_option("--" + prefix + "max-part-bytes", store.max_part_bytes,
                     "Largest snapshot part the store accepts")
      ->capture_default_str();
  command.add_option("--" + prefix + "max-sessions", store.max_sessions, "0: unbounded")
      ->capture_default_str();
  command.add_option("--" + prefix + "ttl-seconds", store.ttl_seconds,
                     "Sessions unused this long expire; 0: never")
      ->capture_default_str();
}

int RunServerRole(const std::string& role, ServerFlags& flags,
                  const std::function<absl::StatusOr<std::unique_ptr<services::RunningProcess>>()>& start) {
  base::LogConfig log;
  log.level = flags.log_level;
  if (absl::Status status = base::ConfigureLogging(log); !status.ok()) return ReportError(status);
  flags.process.peer_wait = std::chrono::milliseconds(flags.peer_wait_ms);
  flags.process.call_timeout = std::chrono::milliseconds(flags.call_timeout_ms);

  // Block the shutdown signals before any thread starts, so only sigwait below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<services::RunningProcess>> process = start();
  if (!process.ok()) return ReportError(process.status());
  std::printf("{\"role\": \"%s\", \"listen\": \"%s\", \"metrics_port\": %d}\n", role.c_str(),
              (*process)->address().c_str(), (*process)->metrics_port());
  std::fflush(stdout);
  spdlog::info("{} serving on {}", role, (*process)->address());

  int signal = 0;
  sigwait(&signals, &signal);
  spdlog::info("{} received signal {}; draining for up to {} s", role, signal, flags.drain_seconds);
  (*process)->Shutdown(std::chrono::seconds(flags.drain_seconds));
  return 0;
}

}  // namespace deltaserve::cli
