// Helpers shared by the checkpoint tests: fresh temp directories, raw file I/O and the
// configurations the tests use.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "gtest/gtest.h"
#include "model/config/kimi_linear_config.h"
#include "model/config/presets.h"

namespace deltaserve::model::testing_util {

inline std::string FixtureDir() {
  return std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";
}

// A new empty directory under the test temp dir, removed with its contents at exit.
inline std::string MakeTempDir() {
  struct Registry {
    std::vector<std::string> dirs;
    ~Registry() {
      for (const std::string& dir : dirs) {
        std::error_code ignored;
        std::filesystem::remove_all(dir, ignored);
      }
    }
  };
  static Registry registry;
  std::string pattern = ::testing::TempDir() + "/ckpt_test_XXXXXX";
  char* made = ::mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr) << "mkdtemp failed for " << pattern;
  registry.dirs.push_back(pattern);
  return pattern;
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return std::move(text).str();
}

// The `tiny` preset: the shape of tests/data/kimi-tiny-public.
inline KimiLinearConfig TinyConfig() { return *PresetConfig("tiny"); }

// Kimi-Linear-48B-A3B (spec §1), for counting; never written.
inline KimiLinearConfig Kimi48BConfig() { return *PresetConfig("kimi-linear-48b-a3b"); }

// The fixture saves the dense layer's FFN as transformers does; the official name is `mlp.*`.
inline std::string FixtureName(const std::string& official) {
  const std::string from = "model.layers.0.mlp.";
  if (official.rfind(from, 0) == 0) {
    return "model.layers.0.block_sparse_moe." + official.substr(from.size());
  }
  return official;
}

}  // namespace deltaserve::model::testing_util
