// WriteRandomCheckpoint: the result opens as a complete official-layout checkpoint, is a pure
// function of (config, seed), has sane value distributions, and the size guards write nothing.
#include "model/checkpoint/random_checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint/checkpoint.h"
#include "model/checkpoint/tensor_specs.h"
#include "model/config/presets.h"
#include "nlohmann/json.hpp"
#include "tests/model/checkpoint/checkpoint_test_util.h"

namespace deltaserve::model {
namespace {

using kernels::DType;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testing_util::MakeTempDir;
using testing_util::ReadFile;
using testing_util::TinyConfig;

std::vector<std::string> FilesIn(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The tiny shapes with a larger vocabulary, so the embedding is filled by several threads.
KimiLinearConfig WiderConfig() {
  KimiLinearConfig config = TinyConfig();
  config.vocab_size = 8192;
  return config;
}

std::vector<float> Values(const TensorSpec& spec, uint64_t seed) {
  int64_t count = 1;
  for (const int64_t dim : spec.shape) count *= dim;
  std::vector<unsigned char> bytes(static_cast<size_t>(count) * kernels::DTypeSize(spec.dtype));
  FillRandomTensor(spec, seed, 0, count, bytes.data());
  std::vector<float> values(static_cast<size_t>(count));
  kernels::ConvertToF32(bytes.data(), spec.dtype, values.data(), values.size());
  return values;
}

TEST(RandomCheckpointTest, TinyCheckpointOpensComplete) {
  const std::string dir = MakeTempDir() + "/tiny";
  const KimiLinearConfig config = TinyConfig();
  ASSERT_TRUE(WriteRandomCheckpoint(config, 7, dir).ok());
  EXPECT_THAT(FilesIn(dir),
              ::testing::ElementsAre("config.json", "model-00001-of-00001.safetensors",
                                     "model.safetensors.index.json"));

  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(ConfigFingerprint((*checkpoint)->config()), ConfigFingerprint(config));
  for (const TensorSpec& spec : ExpectedTensorSpecs(config)) {
    const auto tensor = (*checkpoint)->Get(spec.name, spec.shape);
    ASSERT_TRUE(tensor.ok()) << tensor.status();
    EXPECT_EQ(tensor->entry->dtype, spec.dtype) << spec.name;
  }
  EXPECT_TRUE((*checkpoint)->Unclaimed().empty());
}

TEST(RandomCheckpointTest, ShardsAndIndexFollowTheOfficialLayout) {
  const std::string dir = MakeTempDir();
  RandomCheckpointOptions options;
  options.max_shard_bytes = 200 << 10;
  ASSERT_TRUE(WriteRandomCheckpoint(TinyConfig(), 1, dir, options).ok());

  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(dir + "/model.safetensors.index.json"));
  std::set<std::string> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) shards.insert(shard);
  ASSERT_GT(shards.size(), 3u);
  for (size_t i = 1; i <= shards.size(); ++i) {
    EXPECT_TRUE(shards.contains(absl::StrFormat("model-%05d-of-%05d.safetensors", i, shards.size())))
        << i;
  }

  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  uint64_t data_bytes = 0;
  for (const auto& [name, tensor] : (*checkpoint)->tensors()) {
    data_bytes += tensor.entry->num_bytes;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), data_bytes);
  EXPECT_EQ(index["weight_map"].size(), ExpectedTensorSpecs(TinyConfig()).size());
  for (const std::string& shard : shards) {
    const auto size = std::filesystem::file_size(dir + "/" + shard);
    // Only a shard holding one tensor may exceed the limit (plus its header).
    EXPECT_LT(size, options.max_shard_bytes + 64 * 1024) << shard;
  }
  const auto estimate = RandomCheckpointBytes(TinyConfig(), options);
  ASSERT_TRUE(estimate.ok());
  uint64_t on_disk = 0;
  for (const std::string& name : FilesIn(dir)) on_disk += std::filesystem::file_size(dir + "/" + name);
  EXPECT_GE(*estimate, on_disk);
}

TEST(RandomCheckpointTest, SameSeedGivesIdenticalFilesWhateverTheThreadCount) {
  const std::string root = MakeTempDir();
  RandomCheckpointOptions one_thread;
  one_thread.threads = 1;
  RandomCheckpointOptions many_threads;
  many_threads.threads = 7;
  ASSERT_TRUE(WriteRandomCheckpoint(WiderConfig(), 42, root + "/a", one_thread).ok());
  ASSERT_TRUE(WriteRandomCheckpoint(WiderConfig(), 42, root + "/b", many_threads).ok());
  const std::vector<std::string> files = FilesIn(root + "/a");
  ASSERT_EQ(files, FilesIn(root + "/b"));
  for (const std::string& name : files) {
    EXPECT_TRUE(ReadFile(root + "/a/" + name) == ReadFile(root + "/b/" + name)) << name;
  }
}

TEST(RandomCheckpointTest, ValuesDoNotDependOnShardSize) {
  const std::string root = MakeTempDir();
  RandomCheckpointOptions small_shards;
  small_shards.max_shard_bytes = 100 << 10;
  ASSERT_TRUE(WriteRandomCheckpoint(TinyConfig(), 5, root + "/one").ok());
  ASSERT_TRUE(WriteRandomCheckpoint(TinyConfig(), 5, root + "/many", small_shards).ok());
  auto one = Checkpoint::Open(root + "/one");
  auto many = Checkpoint::Open(root + "/many");
  ASSERT_TRUE(one.ok() && many.ok());
  EXPECT_EQ((*one)->WeightsFingerprint(), (*many)->WeightsFingerprint());
  for (const auto& [name, tensor] : (*one)->tensors()) {
    const TensorEntry& other = *(*many)->tensors().at(name).entry;
    ASSERT_EQ(tensor.entry->num_bytes, other.num_bytes);
    EXPECT_EQ(std::memcmp(tensor.entry->data, other.data, other.num_bytes), 0) << name;
  }
}

TEST(RandomCheckpointTest, DifferentSeedsGiveDifferentFingerprints) {
  const std::string root = MakeTempDir();
  ASSERT_TRUE(WriteRandomCheckpoint(TinyConfig(), 1, root + "/s1").ok());
  ASSERT_TRUE(WriteRandomCheckpoint(TinyConfig(), 2, root + "/s2").ok());
  auto first = Checkpoint::Open(root + "/s1");
  auto second = Checkpoint::Open(root + "/s2");
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_NE((*first)->WeightsFingerprint(), (*second)->WeightsFingerprint());
}

TEST(RandomCheckpointTest, AnySplitOfATensorGivesTheSameBytes) {
  for (const TensorSpec& spec : ExpectedTensorSpecs(TinyConfig())) {
    if (spec.name != "model.embed_tokens.weight" &&
        spec.name != "model.layers.0.self_attn.dt_bias") {
      continue;
    }
    int64_t count = 1;
    for (const int64_t dim : spec.shape) count *= dim;
    const size_t element_bytes = kernels::DTypeSize(spec.dtype);
    std::vector<unsigned char> whole(static_cast<size_t>(count) * element_bytes);
    std::vector<unsigned char> pieces(whole.size());
    FillRandomTensor(spec, 3, 0, count, whole.data());
    for (int64_t first = 0; first < count;) {
      const int64_t piece = std::min<int64_t>(count - first, 1 + (first * 7919) % 37);
      FillRandomTensor(spec, 3, first, piece, pieces.data() + first * element_bytes);
      first += piece;
    }
    EXPECT_EQ(whole, pieces) << spec.name;
  }
}

TEST(RandomCheckpointTest, DistributionsFollowTheRoles) {
  std::map<TensorRole, int> checked;
  for (const TensorSpec& spec : ExpectedTensorSpecs(WiderConfig())) {
    const std::vector<float> values = Values(spec, 11);
    double sum = 0.0;
    double sum_sq = 0.0;
    float lo = values[0];
    float hi = values[0];
    for (const float v : values) {
      ASSERT_TRUE(std::isfinite(v)) << spec.name;
      sum += v;
      sum_sq += static_cast<double>(v) * v;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    const double n = static_cast<double>(values.size());
    const double mean = sum / n;
    const double stddev = std::sqrt(std::max(0.0, sum_sq / n - mean * mean));
    const double fan = static_cast<double>(spec.shape.back());
    SCOPED_TRACE(spec.name);
    ++checked[spec.role];
    switch (spec.role) {
      case TensorRole::kEmbedding:
        EXPECT_NEAR(mean, 0.0, 0.01);
        EXPECT_NEAR(stddev, 1.0, 0.01);
        break;
      case TensorRole::kLmHead:
      case TensorRole::kProjection:
      case TensorRole::kRouterWeight:
      case TensorRole::kConvWeight:
        if (n < 1000) break;  // too few samples for the moments
        EXPECT_NEAR(mean, 0.0, 5.0 / std::sqrt(n * fan));
        EXPECT_NEAR(stddev * std::sqrt(fan), 1.0, 0.1);
        break;
      case TensorRole::kNormWeight:
        EXPECT_NEAR(mean, 1.0, 0.1);
        EXPECT_GT(lo, 0.4f);
        EXPECT_LT(hi, 1.6f);
        break;
      case TensorRole::kALog:
        EXPECT_GE(lo, 0.0f);
        EXPECT_LT(hi, std::log(16.0f) + 1e-6f);
        break;
      case TensorRole::kDtBias:
        for (const float v : values) {
          const double dt = std::log1p(std::exp(static_cast<double>(v)));  // softplus
          EXPECT_GE(dt, 1e-3 * 0.999);
          EXPECT_LE(dt, 1e-1 * 1.001);
        }
        EXPECT_LT(lo, std::log(std::expm1(3e-3f)));  // spread over the range
        EXPECT_GT(hi, std::log(std::expm1(3e-2f)));
        break;
      case TensorRole::kRouterBias:
        EXPECT_GE(lo, -0.0502f);  // bf16 rounding of U(-0.05, 0.05)
        EXPECT_LE(hi, 0.0502f);
        EXPECT_LT(lo, hi);
        break;
    }
  }
  EXPECT_EQ(checked.size(), 9u) << "every role is exercised";
}

TEST(RandomCheckpointTest, RefusesLargeModelWithoutAllowLarge) {
  KimiLinearConfig config = TinyConfig();
  config.vocab_size = 1 << 24;
  config.hidden_size = 1024;  // embedding + head: 64 GiB
  const std::string dir = MakeTempDir() + "/large";
  const absl::Status status = WriteRandomCheckpoint(config, 1, dir);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(dir), HasSubstr("GiB"), HasSubstr("--allow-large")));
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(RandomCheckpointTest, RefusesTheReleaseShapesWithoutAllowLarge) {
  const auto config = PresetConfig("kimi-linear-48b-a3b");
  ASSERT_TRUE(config.ok()) << config.status();
  const auto bytes = RandomCheckpointBytes(*config);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_GT(*bytes, uint64_t{98245528576});  // tensor bytes of the release (spec §6)
  EXPECT_LT(*bytes, uint64_t{98245528576} + (uint64_t{64} << 20));
  const std::string dir = MakeTempDir() + "/release";
  const absl::Status status = WriteRandomCheckpoint(*config, 1, dir);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), AllOf(HasSubstr("91.50 GiB"), HasSubstr("--allow-large")));
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(RandomCheckpointTest, RefusesWhenTheDiskIsTooSmall) {
  KimiLinearConfig config = TinyConfig();
  config.vocab_size = 1 << 24;
  config.hidden_size = 65536;  // embedding + head: 4 TiB
  const std::string dir = MakeTempDir() + "/huge/nested";
  RandomCheckpointOptions options;
  options.allow_large = true;
  const absl::Status status = WriteRandomCheckpoint(config, 1, dir, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(dir), HasSubstr("free")));
  EXPECT_FALSE(std::filesystem::exists(dir));
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(dir).parent_path()));
}

TEST(RandomCheckpointTest, RejectsBadOptions) {
  RandomCheckpointOptions options;
  options.max_shard_bytes = 0;
  const std::string dir = MakeTempDir() + "/bad";
  EXPECT_EQ(WriteRandomCheckpoint(TinyConfig(), 1, dir, options).code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.threads = -1;
  EXPECT_EQ(WriteRandomCheckpoint(TinyConfig(), 1, dir, options).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir));
}

}  // namespace
}  // namespace deltaserve::model
