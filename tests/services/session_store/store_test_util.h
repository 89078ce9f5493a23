// Test helpers for the session store: a fake clock, a temporary directory, valid (and broken)
// state snapshots built from the envelope layout alone, and file surgery.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/session_store/clock.h"

// Expects `expr` (a Status or StatusOr) to carry absl::StatusCode::`expected`.
#define EXPECT_CODE(expr, expected)                                                    \
  do {                                                                                 \
    const ::absl::Status ds_status_ = ::deltaserve::services::testing::StatusOf(expr); \
    EXPECT_EQ(ds_status_.code(), ::absl::StatusCode::expected) << ds_status_;          \
  } while (false)

namespace deltaserve::services::testing {

inline absl::Status StatusOf(const absl::Status& status) { return status; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& value) {
  return value.status();
}

// The value, or the test binary stops with the status (for steps that must not fail).
template <typename T>
T Must(absl::StatusOr<T> value) {
  if (!value.ok()) {
    std::fprintf(stderr, "unexpected error: %s\n", value.status().ToString().c_str());
    std::abort();
  }
  return *std::move(value);
}
inline void Must(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "unexpected error: %s\n", status.ToString().c_str());
    std::abort();
  }
}

class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t now_unix_ms = 1'700'000'000'000) : now_ms_(now_unix_ms) {}
  int64_t NowUnixMs() const override { return now_ms_.load(); }
  void AdvanceMs(int64_t ms) { now_ms_ += ms; }

 private:
  std::atomic<int64_t> now_ms_;
};

// A fresh directory under $TEST_TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A state snapshot with a valid envelope (model/state/state_envelope.h layout): magic,
// version, flags 0, fingerprint, layer range, token count, tokens, `body`, CRC-32.
std::string BuildStateSnapshot(uint64_t model_fingerprint, uint32_t layer_begin, uint32_t layer_end,
                               const std::vector<int32_t>& tokens, std::string_view body);

// Deterministic bytes of length `n` derived from `seed`.
std::string TestBytes(size_t n, uint32_t seed);

std::string ReadFileOrDie(const std::string& path);
void WriteFileOrDie(const std::string& path, std::string_view bytes);
// XORs the byte at `offset` (negative: from the end) with 0xff.
void FlipByte(const std::string& path, int64_t offset);
// Paths of the regular files under `dir`, recursively, sorted.
std::vector<std::string> ListFiles(const std::string& dir);

}  // namespace deltaserve::services::testing
