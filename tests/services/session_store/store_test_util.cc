// Test helpers for the session store.
#include "tests/services/session_store/store_test_util.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "model/state/state_envelope.h"

namespace deltaserve::services::testing {
namespace {

template <typename T>
void PutLe(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) {
    out.push_back(static_cast<char>((static_cast<uint64_t>(value) >> (8 * i)) & 0xff));
  }
}

}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/session_store_test.XXXXXX";
  char* made = ::mkdtemp(pattern.data());
  if (made == nullptr) ADD_FAILURE() << "mkdtemp failed: " << std::strerror(errno);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code error;
  std::filesystem::remove_all(path_, error);
}

std::string BuildStateSnapshot(uint64_t model_fingerprint, uint32_t layer_begin, uint32_t layer_end,
                               const std::vector<int32_t>& tokens, std::string_view body) {
  std::string out(model::kStateMagic, sizeof(model::kStateMagic));
  PutLe<uint32_t>(out, model::kStateFormatVersion);
  PutLe<uint32_t>(out, 0);  // flags
  PutLe<uint64_t>(out, model_fingerprint);
  PutLe<uint32_t>(out, layer_begin);
  PutLe<uint32_t>(out, layer_end);
  PutLe<uint64_t>(out, tokens.size());
  for (int32_t token : tokens) PutLe<uint32_t>(out, static_cast<uint32_t>(token));
  out.append(body.data(), body.size());
  PutLe<uint32_t>(out, model::StateChecksum(out));
  return out;
}

std::string TestBytes(size_t n, uint32_t seed) {
  std::string out(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    out[i] = static_cast<char>(x & 0xff);
  }
  return out;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFileOrDie(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  EXPECT_TRUE(out.good()) << path;
}

void FlipByte(const std::string& path, int64_t offset) {
  std::string bytes = ReadFileOrDie(path);
  const int64_t at = offset >= 0 ? offset : static_cast<int64_t>(bytes.size()) + offset;
  ASSERT_GE(at, 0);
  ASSERT_LT(at, static_cast<int64_t>(bytes.size()));
  bytes[static_cast<size_t>(at)] = static_cast<char>(bytes[static_cast<size_t>(at)] ^ 0xff);
  WriteFileOrDie(path, bytes);
}

std::vector<std::string> ListFiles(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code error;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir, error)) {
    if (entry.is_regular_file()) files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace deltaserve::services::testing
