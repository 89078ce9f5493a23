// Loading a model's weights: both names of the dense FFN, tied embeddings, scopes, the
// rejection of checkpoints that hold tensors the model would silently ignore, and the release of
// generated tensors a backend has copied.
#include "model/layers/layer_weights.h"

#include <cstdlib>
#include <filesystem>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/checkpoint/random_checkpoint.h"
#include "model/checkpoint/safetensors_writer.h"
#include "model/config/presets.h"
#include "tests/testing/copying_backend.h"

namespace deltaserve::model {
namespace {

std::string NewDir() {
  std::string pattern = ::testing::TempDir() + "layer_weights_XXXXXX";
  EXPECT_NE(mkdtemp(pattern.data()), nullptr);
  return pattern;
}

// A single-file checkpoint of `config` holding `specs` (random values).
void WriteSingleFile(const std::string& dir, const KimiLinearConfig& config,
                     const std::vector<TensorSpec>& specs) {
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& spec : specs) {
    tensors.push_back({spec.name, spec.dtype, spec.shape,
                       [spec](int64_t first, int64_t count, void* dst) {
                         FillRandomTensor(spec, 1, first, count, dst);
                         return absl::OkStatus();
                       }});
  }
  ASSERT_TRUE(WriteFileAtomically(dir + "/config.json", ToOfficialConfigJson(config)).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
}

class LayerWeightsTest : public ::testing::Test {
 protected:
  void SetUp() override { config_ = *PresetConfig("tiny"); }

  absl::StatusOr<ModelWeights> Load(const std::string& dir, const WeightScope& scope = {}) {
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir);
    if (!checkpoint.ok()) return checkpoint.status();
    checkpoint_ = std::move(*checkpoint);
    return LoadModelWeights(*checkpoint_, backend_, scope);
  }

  KimiLinearConfig config_;
  kernels::cpu::CpuBackend backend_{{.num_threads = 1}};
  std::unique_ptr<Checkpoint> checkpoint_;
};

TEST_F(LayerWeightsTest, LoadsTheOfficialAndTheTransformersDenseNames) {
  const std::string official = NewDir();
  WriteSingleFile(official, config_, ExpectedTensorSpecs(config_));
  ASSERT_TRUE(Load(official).ok());

  std::vector<TensorSpec> renamed = ExpectedTensorSpecs(config_);
  for (TensorSpec& spec : renamed) {
    const size_t at = spec.name.find(".mlp.");
    if (at != std::string::npos) spec.name.replace(at, 5, ".block_sparse_moe.");
  }
  const std::string transformers = NewDir();
  WriteSingleFile(transformers, config_, renamed);
  absl::StatusOr<ModelWeights> weights = Load(transformers);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->layer(0).dense.gate.rows, config_.intermediate_size);
}

TEST_F(LayerWeightsTest, RefusesAnUnusedTensor) {
  std::vector<TensorSpec> specs = ExpectedTensorSpecs(config_);
  specs.push_back({"model.layers.1.self_attn.q_norm.weight", {32}, kernels::DType::kBF16,
                   TensorRole::kNormWeight});
  const std::string dir = NewDir();
  WriteSingleFile(dir, config_, specs);
  const absl::Status status = Load(dir).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("model.layers.1.self_attn.q_norm.weight"), std::string::npos) << status;
  EXPECT_NE(status.message().find("model.safetensors"), std::string::npos) << status;
}

TEST_F(LayerWeightsTest, RefusesTwoDenseFfnsInOneLayer) {
  std::vector<TensorSpec> specs = ExpectedTensorSpecs(config_);
  for (const TensorSpec& spec : ExpectedTensorSpecs(config_)) {
    if (spec.name.find(".mlp.") == std::string::npos) continue;
    TensorSpec copy = spec;
    copy.name.replace(copy.name.find(".mlp."), 5, ".block_sparse_moe.");
    specs.push_back(copy);
  }
  const std::string dir = NewDir();
  WriteSingleFile(dir, config_, specs);
  const absl::Status status = Load(dir).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("ambiguous"), std::string::npos) << status;
}

TEST_F(LayerWeightsTest, TiedEmbeddingsServeAsTheHead) {
  config_.tie_word_embeddings = true;
  const std::string dir = NewDir();
  WriteSingleFile(dir, config_, ExpectedTensorSpecs(config_));
  absl::StatusOr<ModelWeights> weights = Load(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->lm_head.data, weights->embed.data);
}

TEST_F(LayerWeightsTest, ScopesLoadOnlyTheirPart) {
  const std::string dir = NewDir();
  WriteSingleFile(dir, config_, ExpectedTensorSpecs(config_));
  absl::StatusOr<ModelWeights> middle = Load(dir, WeightScope{.layer_begin = 1, .layer_end = 3,
                                                              .expert_begin = 2, .expert_end = 5});
  ASSERT_TRUE(middle.ok()) << middle.status();
  EXPECT_EQ(middle->embed.data, nullptr);
  EXPECT_EQ(middle->lm_head.data, nullptr);
  EXPECT_EQ(middle->layers.size(), 2u);
  EXPECT_EQ(middle->layer(2).moe.first_expert, 2);
  EXPECT_EQ(middle->layer(2).moe.experts.size(), 3u);
  EXPECT_FALSE(Load(dir, WeightScope{.layer_begin = 3, .layer_end = 9}).ok());
  EXPECT_FALSE(Load(dir, WeightScope{.expert_begin = 4, .expert_end = 99}).ok());
}

TEST(LayerWeightsReleaseTest, ACopyingBackendLeavesNoGeneratedBytesHeld) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open("random:tiny:4");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  testing::CopyingBackend copying;
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(**checkpoint, copying, {});
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*checkpoint)->generated_bytes_held(), 0u);
  for (const auto& [name, tensor] : (*checkpoint)->tensors()) {
    EXPECT_EQ(tensor.entry->data, nullptr) << name;
  }
  EXPECT_TRUE((*checkpoint)->Unclaimed().empty());
}

TEST(LayerWeightsReleaseTest, TheCpuBackendKeepsTheGeneratedBytesItUsesInPlace) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open("random:tiny:4");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  kernels::cpu::CpuBackend cpu({.num_threads = 1});
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(**checkpoint, cpu, {});
  ASSERT_TRUE(weights.ok()) << weights.status();
  uint64_t total = 0;
  for (const auto& [name, tensor] : (*checkpoint)->tensors()) total += tensor.entry->num_bytes;
  EXPECT_EQ((*checkpoint)->generated_bytes_held(), total);
  EXPECT_EQ(weights->embed.data,
            (*checkpoint)->tensors().at("model.embed_tokens.weight").entry->data);
}

}  // namespace
}  // namespace deltaserve::model
