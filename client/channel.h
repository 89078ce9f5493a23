// Channels to a deltaserve server: insecure (the cluster runs inside a trusted network) with
// keepalive and a configurable receive limit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "grpcpp/channel.h"

namespace deltaserve::client {

struct ChannelOptions {
  // Largest message the client accepts, in bytes; -1: unlimited. gRPC's default is 4 MiB, too
  // small for a ListSessions page of sessions carrying token histories.
  int max_receive_message_bytes = 64 << 20;
  // Interval between keepalive pings on an idle connection, in milliseconds; 0: no keepalive.
  // Servers reject pings more frequent than their
  // GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS (5 minutes by default) on a connection
  // without data, so keep this at least as long as theirs.
  int keepalive_time_ms = 60'000;
  // How long to wait for a ping's ack before closing the connection, in milliseconds.
  int keepalive_timeout_ms = 20'000;
  // Whether to ping while no call is open (needs the server's permission too).
  bool keepalive_without_calls = false;
};

// A channel to `address` ("host:port", "dns:///host:port", "unix:/path"). Connects lazily: an
// unreachable server surfaces as UNAVAILABLE on the first call, not here.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const ChannelOptions& options = {});

}  // namespace deltaserve::client
