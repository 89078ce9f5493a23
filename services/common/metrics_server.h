// MetricsServer: the HTTP endpoint (`--metrics-listen`) serving a process's Prometheus metrics
// at /metrics, and the registry its components register their families in (metrics.h).
//
// The endpoint is a small HTTP/1.1 server of our own over prometheus-cpp's registry and text
// serializer, not prometheus-cpp's civetweb exposer: civetweb runs handlers on small fixed-size
// thread stacks, and in a process that also loads OpenBLAS (its Fortran runtime pulls in
// libquadmath, which registers printf extensions and so switches glibc to its stack-hungry
// positional printf) every scrape crashed inside civetweb's mg_printf.
#pragma once

#include <prometheus/collectable.h>
#include <prometheus/registry.h>

#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace deltaserve::services {

inline constexpr char kMetricsPath[] = "/metrics";

// Owns one prometheus::Registry and the endpoint serving it. The registry and families are
// thread-safe; scrapes are served one at a time on the server's thread, joined by the destructor.
class MetricsServer {
 public:
  // Serves /metrics on `listen_address`: "host:port" ("0.0.0.0:9090"; port 0 picks a free
  // port, see port()). INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot be
  // bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen_address);

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  ~MetricsServer();

  // The bound port.
  int port() const { return port_; }
  // The registry served at /metrics; it lives as long as this server.
  prometheus::Registry& registry() { return *registry_; }
  // Serves `collectable` at /metrics too (e.g. a registry owned by a component created before
  // this server). Weakly held: the caller keeps it alive, and it drops out once destroyed.
  void AddCollectable(const std::weak_ptr<prometheus::Collectable>& collectable);

  // The text exposition of every metric, as a scrape returns it.
  std::string Scrape();

 private:
  MetricsServer(int listen_fd, int wake_fd, int port);
  void Serve();
  void Answer(int connection);

  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  std::mutex mutex_;
  std::vector<std::weak_ptr<prometheus::Collectable>> collectables_;  // guarded by mutex_
  const int listen_fd_;
  const int wake_fd_;  // eventfd that tells Serve to stop
  const int port_;
  std::thread thread_;
};

}  // namespace deltaserve::services
