// Runs `deltaserve` roles as real child processes for integration tests: starts one, reads the
// JSON line it prints once serving (its bound address and metrics port), and stops it with
// SIGTERM (SIGKILL if it does not exit) when destroyed.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace deltaserve::testing {

class ChildProcess {
 public:
  // Starts `binary` with `args`; stderr goes to `log_path`. Waits up to `timeout_seconds` for
  // the first stdout line. ok() tells whether it came.
  ChildProcess(const std::string& binary, const std::vector<std::string>& args,
               const std::string& log_path, int timeout_seconds = 60);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool ok() const { return !address_.empty(); }
  const std::string& address() const { return address_; }
  int metrics_port() const { return metrics_port_; }
  const std::string& first_line() const { return first_line_; }
  // Sends SIGTERM and waits; returns the exit status (-1 if killed by a signal).
  int Stop();

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string first_line_;
  std::string address_;
  int metrics_port_ = 0;
};

// The body of GET http://127.0.0.1:<port>/metrics ("" on failure).
std::string ScrapeMetrics(int port);

// Runs a command and returns its exit status and stdout.
struct CommandResult {
  int exit_code = -1;
  std::string out;
};
CommandResult RunCommand(const std::string& command);

}  // namespace deltaserve::testing
