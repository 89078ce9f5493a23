// Helpers shared by the checkpoint tests: fresh temp directories, raw file I/O and the
// configuration of the public tiny fixture built by hand.
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

// The configuration of tests/data/kimi-tiny-public/config.json, written out by hand so the
// checkpoint tests do not depend on the config parser.
inline KimiLinearConfig TinyConfig() {
  KimiLinearConfig c;
  c.vocab_size = 512;
  c.hidden_size = 128;
  c.num_layers = 4;
  c.intermediate_size = 256;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  c.max_position_embeddings = 1048576;
  c.eos_token_ids = {2};
  c.bos_token_id = 1;
  c.pad_token_id = 0;
  c.mla_num_heads = 2;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.kda_num_heads = 2;
  c.kda_head_dim = 32;
  c.conv_kernel_size = 4;
  c.num_experts = 8;
  c.num_experts_per_token = 2;
  c.num_shared_experts = 1;
  c.moe_intermediate_size = 64;
  c.num_expert_group = 1;
  c.topk_group = 1;
  c.moe_renormalize = true;
  c.routed_scaling_factor = 2.446;
  c.mixer_kinds = {MixerKind::kKda, MixerKind::kKda, MixerKind::kKda, MixerKind::kMla};
  c.ffn_kinds = {FfnKind::kDense, FfnKind::kMoe, FfnKind::kMoe, FfnKind::kMoe};
  return c;
}

// Kimi-Linear-48B-A3B (spec §1), for counting; never written.
inline KimiLinearConfig Kimi48BConfig() {
  KimiLinearConfig c = TinyConfig();
  c.vocab_size = 163840;
  c.hidden_size = 2304;
  c.num_layers = 27;
  c.intermediate_size = 9216;
  c.eos_token_ids = {163586};
  c.bos_token_id = 163584;
  c.pad_token_id = 163839;
  c.mla_num_heads = 32;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.kda_num_heads = 32;
  c.kda_head_dim = 128;
  c.num_experts = 256;
  c.num_experts_per_token = 8;
  c.moe_intermediate_size = 1024;
  c.mixer_kinds.assign(27, MixerKind::kKda);
  for (int layer : {3, 7, 11, 15, 19, 23, 26}) c.mixer_kinds[layer] = MixerKind::kMla;
  c.ffn_kinds.assign(27, FfnKind::kMoe);
  c.ffn_kinds[0] = FfnKind::kDense;
  return c;
}

// The fixture saves the dense layer's FFN as transformers does; the official name is `mlp.*`.
inline std::string FixtureName(const std::string& official) {
  const std::string from = "model.layers.0.mlp.";
  if (official.rfind(from, 0) == 0) {
    return "model.layers.0.block_sparse_moe." + official.substr(from.size());
  }
  return official;
}

}  // namespace deltaserve::model::testing_util
