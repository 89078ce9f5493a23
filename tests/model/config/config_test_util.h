// Shared helpers for the model/config tests: the public tiny fixture and its transformers twin.
#pragma once

#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model::testing {

inline std::string TinyFixturePath() {
  return std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public/config.json";
}

inline std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The tiny fixture as transformers 5.17 saves it (layout of its default_config.json): 0-based
// layer_types, mlp_layer_types, linear_* fields, canonical attribute names, head_dim = rope dim.
inline constexpr char kTinyTransformersJson[] = R"json({
  "transformers_version": "5.17.0",
  "architectures": ["KimiLinearForCausalLM"],
  "dtype": "bfloat16",
  "vocab_size": 512,
  "hidden_size": 128,
  "intermediate_size": 256,
  "moe_intermediate_size": 64,
  "num_hidden_layers": 4,
  "num_attention_heads": 2,
  "num_key_value_heads": 2,
  "num_shared_experts": 1,
  "routed_scaling_factor": 2.446,
  "kv_lora_rank": 32,
  "q_lora_rank": null,
  "qk_rope_head_dim": 8,
  "v_head_dim": 16,
  "qk_nope_head_dim": 16,
  "num_expert_group": 1,
  "topk_group": 1,
  "num_experts_per_token": 2,
  "moe_renormalize": true,
  "hidden_act": "silu",
  "model_max_length": 1048576,
  "initializer_range": 0.02,
  "rms_norm_eps": 1e-05,
  "use_cache": true,
  "pad_token_id": 0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "pretraining_tp": 1,
  "tie_word_embeddings": false,
  "attention_bias": false,
  "attention_dropout": 0.0,
  "num_experts": 8,
  "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"],
  "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
  "linear_head_dim": 32,
  "linear_num_heads": 2,
  "linear_conv_kernel_dim": 4,
  "qk_head_dim": 24,
  "head_dim": 8,
  "_name_or_path": "",
  "model_type": "kimi_linear"
})json";

}  // namespace deltaserve::model::testing
