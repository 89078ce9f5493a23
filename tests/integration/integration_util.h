// Shared by the integration tests: the binary and fixture, request builders, the reference
// tokens from `deltaserve generate`, metric reading, and the three-turn session check.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/inference_client.h"
#include "deltaserve/v1/inference.pb.h"

namespace deltaserve::integration {

inline const std::string kBinary = DELTASERVE_BINARY;

// The public fixture: 4 layers (KDA x3, MLA), 8 experts top-2, vocab 512.
std::string FixtureDir();
std::string NewTempDir(const std::string& name);
// Where a child's stderr goes (kept for a failing test's reader).
std::string LogPath(const std::string& name);

// A greedy request without a session.
v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int32_t max_new_tokens);
// The tokens `deltaserve generate --temperature 0` produces on `model_dir`.
std::vector<int32_t> CliGreedy(const std::string& model_dir, const std::vector<int32_t>& prompt,
                               int32_t max_new_tokens);

// The value of one series in a scrape of /metrics, e.g. `deltaserve_requests_total{outcome="stop"}`;
// -1 when absent.
double MetricValue(int metrics_port, const std::string& series);
void ExpectPromtoolAccepts(int metrics_port);
// Polls `condition` until true or ~20 s.
bool WaitFor(const std::function<bool()>& condition);

// A long greedy turn of session `session_id` (created by it) on its own thread, streaming into
// `streamed`; join `thread` before reading `status`.
struct LongTurn {
  std::mutex mutex;
  std::vector<int32_t> streamed;
  absl::Status status;
  std::thread thread;

  LongTurn(client::InferenceClient& client, const std::string& session_id,
           const std::vector<int32_t>& prompt, int32_t max_new_tokens);
  size_t count();
};

// `streams` greedy generations at once, each streaming: every one completes, its streamed tokens
// are its result, and the result equals what the same request gets alone.
void ExpectConcurrentStreamsComplete(client::InferenceClient client, int streams);

// Three turns of one session against the server behind `client`: each turn's tokens equal those
// of one request carrying the whole history, usage shows the history restored (not recomputed),
// and the router's metrics count the restored tokens.
void ExpectSessionMatchesWholeHistory(client::InferenceClient client, int router_metrics_port,
                                      const std::string& session_id);

}  // namespace deltaserve::integration
