#include "services/common/metrics_server.h"

#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <chrono>
#include <string_view>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "prometheus/text_serializer.h"

namespace deltaserve::services {
namespace {

constexpr size_t kMaxRequestBytes = 8192;
// A connection gets this long in all to send its request and take the answer.
constexpr auto kConnectionBudget = std::chrono::seconds(5);

absl::Status CheckHostPort(const std::string& address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  int number = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), &number) || number < 0 ||
      number > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "metrics listen address must be 'host:port' with a port in [0, 65535], got '%s'", address));
  }
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  *port = address.substr(colon + 1);
  return absl::OkStatus();
}

using Deadline = std::chrono::steady_clock::time_point;

// Waits until `fd` is ready for `events` or `wake` fires or the deadline passes; true when ready.
bool WaitReady(int fd, short events, int wake, Deadline deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd fds[2] = {{fd, events, 0}, {wake, POLLIN, 0}};
    const int n = poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || fds[1].revents != 0) return false;
    return true;
  }
}

void WriteAll(int fd, std::string_view data, int wake, Deadline deadline) {
  while (!data.empty()) {
    if (!WaitReady(fd, POLLOUT, wake, deadline)) return;
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return;
    data.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen_address) {
  std::string host, port;
  if (absl::Status status = CheckHostPort(listen_address, &host, &port); !status.ok()) return status;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* resolved = nullptr;
  if (const int error = getaddrinfo(host.c_str(), port.c_str(), &hints, &resolved); error != 0) {
    return absl::UnavailableError(absl::StrFormat("could not serve metrics on '%s': %s",
                                                  listen_address, gai_strerror(error)));
  }
  int fd = -1;
  std::string failure = "no usable address";
  for (addrinfo* a = resolved; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 16) != 0) {
      failure = std::strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(resolved);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrFormat("could not serve metrics on '%s': %s", listen_address, failure));
  }
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  const int bound_port = bound.ss_family == AF_INET6
                             ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                             : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  const int wake = eventfd(0, EFD_CLOEXEC);
  if (wake < 0) {
    close(fd);
    return absl::UnavailableError(absl::StrFormat("eventfd: %s", std::strerror(errno)));
  }
  return std::unique_ptr<MetricsServer>(new MetricsServer(fd, wake, bound_port));
}

MetricsServer::MetricsServer(int listen_fd, int wake_fd, int port)
    : listen_fd_(listen_fd), wake_fd_(wake_fd), port_(port), thread_([this] { Serve(); }) {}

MetricsServer::~MetricsServer() {
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  thread_.join();
  close(listen_fd_);
  close(wake_fd_);
}

void MetricsServer::AddCollectable(const std::weak_ptr<prometheus::Collectable>& collectable) {
  std::lock_guard<std::mutex> lock(mutex_);
  collectables_.push_back(collectable);
}

std::string MetricsServer::Scrape() {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::vector<std::shared_ptr<prometheus::Collectable>> alive;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& weak : collectables_) {
      if (auto strong = weak.lock()) alive.push_back(std::move(strong));
    }
  }
  for (const auto& collectable : alive) {
    std::vector<prometheus::MetricFamily> more = collectable->Collect();
    families.insert(families.end(), std::make_move_iterator(more.begin()),
                    std::make_move_iterator(more.end()));
  }
  return prometheus::TextSerializer().Serialize(families);
}

void MetricsServer::Serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    const int connection = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (connection < 0) {
      // Out of descriptors: the listen socket stays readable, so pause instead of spinning.
      if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    Answer(connection);
    close(connection);
  }
}

void MetricsServer::Answer(int connection) {
  const Deadline deadline = std::chrono::steady_clock::now() + kConnectionBudget;
  std::string request;
  char buffer[1024];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < kMaxRequestBytes) {
    if (!WaitReady(connection, POLLIN, wake_fd_, deadline)) return;
    const ssize_t n = recv(connection, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    request.append(buffer, static_cast<size_t>(n));
  }
  const size_t line_end = request.find("\r\n");
  const std::string_view line = std::string_view(request).substr(0, line_end);
  const bool head = line.rfind("HEAD ", 0) == 0;
  auto reply = [&](const char* status, const std::string& body, const char* type) {
    WriteAll(connection,
             absl::StrFormat("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                             "Connection: close\r\n\r\n",
                             status, type, body.size()),
             wake_fd_, deadline);
    if (!head) WriteAll(connection, body, wake_fd_, deadline);
  };
  if (line_end == std::string::npos) {
    reply("400 Bad Request", "bad request\n", "text/plain");
    return;
  }
  const size_t first_space = line.find(' ');
  const size_t second_space = line.find(' ', first_space + 1);
  const std::string_view method = line.substr(0, first_space);
  std::string_view target = first_space == std::string_view::npos || second_space == std::string_view::npos
                                ? std::string_view()
                                : line.substr(first_space + 1, second_space - first_space - 1);
  target = target.substr(0, target.find('?'));
  if (method != "GET" && method != "HEAD") {
    reply("405 Method Not Allowed", "only GET\n", "text/plain");
  } else if (target != kMetricsPath) {
    reply("404 Not Found", "metrics are at /metrics\n", "text/plain");
  } else {
    reply("200 OK", Scrape(), "text/plain; version=0.0.4; charset=utf-8");
  }
}

}  // namespace deltaserve::services
