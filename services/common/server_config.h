// GrpcServerConfig: the limits and keepalive policy every deltaserve gRPC server runs with,
// how they become channel arguments, and the deadline a handler applies when the client sent none.
#pragma once

#include <grpcpp/server_builder.h>
#include <grpcpp/server_context.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"

namespace deltaserve::services {

// Defaults suit both planes; `cli/` fills one per role from flags. Roles that move activations
// in one message (stage workers) raise the message limits; the session store streams parts in
// chunks. Every *_bytes and *_ms value is bounded by INT32_MAX (gRPC channel arguments are int).
struct GrpcServerConfig {
  // "host:port" ("0.0.0.0:50051", "[::]:50051", "127.0.0.1:0" for an ephemeral port) or
  // "unix:/path".
  std::string listen_address = "0.0.0.0:50051";

  // Largest message the server accepts (64 MiB: a 1M-token prompt is at most ~5 MiB).
  // A larger one fails that call with RESOURCE_EXHAUSTED; the connection stays up.
  int64_t max_receive_message_bytes = int64_t{64} << 20;
  // Largest message a handler may send (64 MiB); larger fails the call with RESOURCE_EXHAUSTED.
  int64_t max_send_message_bytes = int64_t{64} << 20;
  // Sum of one request's metadata (headers) the server accepts (16 KiB). A larger request fails
  // with RESOURCE_EXHAUSTED, and gRPC 1.51 may also close that connection (clients reconnect).
  int64_t max_metadata_bytes = int64_t{16} << 10;

  // Concurrent calls per HTTP/2 connection (256). Streams above it wait at the client.
  int64_t max_concurrent_streams = 256;
  // Threads the sync server may use for handlers, across connections (1024). Each running call
  // (a streaming Generate included) holds one; calls beyond it fail with RESOURCE_EXHAUSTED.
  // At least 4: gRPC's pollers draw on the same quota.
  int64_t max_threads = 1024;

  // Keepalive enforcement: the shortest interval between a client's pings without data that
  // the server tolerates (10 s; gRPC's default is 5 min, which makes clients that ping every
  // 10-30 s get GOAWAY "too_many_pings"). Faster pings count as strikes.
  int64_t min_ping_interval_ms = 10'000;
  // Strikes before the server sends GOAWAY and closes the connection (gRPC's default, 2).
  int64_t max_ping_strikes = 2;
  // Whether clients may ping on connections with no call in flight (routers keep idle channels
  // to workers warm); gRPC uses the same switch for the server's own pings on idle connections.
  bool permit_keepalive_without_calls = true;
  // The server pings each client connection after this long without activity (30 s) and drops
  // it when no ack comes within keepalive_timeout_ms (10 s): a vanished client's stream is
  // cancelled in at most ~40 s instead of at the TCP timeout. The server keeps pinging while no
  // data flows (GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA = 0).
  int64_t keepalive_time_ms = 30'000;
  int64_t keepalive_timeout_ms = 10'000;

  // Deadline handlers apply when the client sends none (10 min: long generations finish, an
  // abandoned call does not hold its slot forever). See EffectiveDeadline.
  int64_t default_deadline_ms = 600'000;

  // Close connections idle this long (unset: never).
  std::optional<int64_t> max_connection_idle_ms;
  // Close connections after this age, so clients re-resolve and rebalance (unset: never); calls
  // in flight get max_connection_age_grace_ms to finish (unset: unlimited).
  std::optional<int64_t> max_connection_age_ms;
  std::optional<int64_t> max_connection_age_grace_ms;

  // OK, or INVALID_ARGUMENT naming the first bad field with its allowed range and value.
  absl::Status Validate() const;

  // Sets the message limits, the channel arguments and the thread quota on `builder`, and turns
  // SO_REUSEPORT off (a port in use is a bind error). Not the listening port: GrpcServer adds
  // that. Call after Validate() succeeded.
  void ApplyTo(grpc::ServerBuilder& builder) const;
};

// The client's deadline, or now + config.default_deadline_ms when the client sent none.
std::chrono::system_clock::time_point EffectiveDeadline(const grpc::ServerContext& context,
                                                        const GrpcServerConfig& config);
// As above with the current time injected (tests, or a caller that already read the clock).
std::chrono::system_clock::time_point EffectiveDeadline(const grpc::ServerContext& context,
                                                        const GrpcServerConfig& config,
                                                        std::chrono::system_clock::time_point now);

}  // namespace deltaserve::services
