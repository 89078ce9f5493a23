// Checkpoint: the public fixture opens with every expected tensor, and every inconsistency between
// config, index and shards is an error naming the file and tensor.
#include "model/checkpoint/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint/safetensors_writer.h"
#include "model/checkpoint/tensor_specs.h"
#include "tests/model/checkpoint/checkpoint_test_util.h"

namespace deltaserve::model {
namespace {

using kernels::DType;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing_util::FixtureDir;
using testing_util::FixtureName;
using testing_util::MakeTempDir;
using testing_util::ReadFile;
using testing_util::TinyConfig;
using testing_util::WriteFile;

struct SmallTensor {
  std::string name;
  std::vector<int64_t> shape;
};

absl::Status WriteShard(const std::string& path, const std::vector<SmallTensor>& tensors) {
  std::vector<TensorToWrite> to_write;
  for (const SmallTensor& tensor : tensors) {
    to_write.push_back({tensor.name, DType::kBF16, tensor.shape,
                        [](int64_t, int64_t count, void* dst) {
                          std::memset(dst, 0x3f, static_cast<size_t>(count) * 2);
                          return absl::OkStatus();
                        }});
  }
  return WriteSafetensors(path, to_write);
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    WriteFile(dir_ + "/config.json", ReadFile(FixtureDir() + "/config.json"));
  }

  // Two shards, a.safetensors {x, y} and b.safetensors {z}, and an index written from `map`.
  void WriteTwoShards(const std::string& weight_map_json) {
    ASSERT_TRUE(WriteShard(dir_ + "/a.safetensors", {{"x", {2, 3}}, {"y", {4}}}).ok());
    ASSERT_TRUE(WriteShard(dir_ + "/b.safetensors", {{"z", {5}}}).ok());
    WriteFile(dir_ + "/model.safetensors.index.json",
              R"({"metadata":{"total_size":30},"weight_map":)" + weight_map_json + "}");
  }

  absl::Status OpenStatus() { return Checkpoint::Open(dir_).status(); }

  std::string dir_;
};

TEST(CheckpointFixtureTest, PublicFixtureHasEveryExpectedTensor) {
  auto checkpoint = Checkpoint::Open(FixtureDir());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->dir(), FixtureDir());
  EXPECT_EQ((*checkpoint)->config().num_layers, 4);
  EXPECT_EQ((*checkpoint)->config().hidden_size, 128);
  EXPECT_EQ((*checkpoint)->tensors().size(), 151u);

  const std::vector<TensorSpec> specs = ExpectedTensorSpecs((*checkpoint)->config());
  for (const TensorSpec& spec : specs) {
    const std::string name = FixtureName(spec.name);
    ASSERT_TRUE((*checkpoint)->Has(name)) << name;
    const auto tensor = (*checkpoint)->Get(name, spec.shape);
    ASSERT_TRUE(tensor.ok()) << tensor.status();
    EXPECT_EQ(tensor->entry->dtype, spec.dtype) << name;
    EXPECT_EQ(tensor->entry->name, name);
    EXPECT_THAT(*tensor->file, HasSubstr("model-0000"));
  }
  EXPECT_TRUE((*checkpoint)->Unclaimed().empty());
  const auto head = (*checkpoint)->Get("lm_head.weight", {512, 128});
  ASSERT_TRUE(head.ok());
  EXPECT_THAT(*head->file, HasSubstr("model-00002-of-00002.safetensors"));
}

TEST(CheckpointFixtureTest, FingerprintIsStable) {
  auto first = Checkpoint::Open(FixtureDir());
  auto second = Checkpoint::Open(FixtureDir());
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ((*first)->WeightsFingerprint(), (*second)->WeightsFingerprint());
  EXPECT_NE((*first)->WeightsFingerprint(), 0u);
}

TEST(CheckpointFixtureTest, ReportsMissingTensor) {
  auto checkpoint = Checkpoint::Open(FixtureDir());
  ASSERT_TRUE(checkpoint.ok());
  const auto tensor = (*checkpoint)->Get("model.layers.9.mlp.up_proj.weight", {256, 128});
  ASSERT_FALSE(tensor.ok());
  EXPECT_EQ(tensor.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tensor.status().message(),
            FixtureDir() +
                ": tensor 'model.layers.9.mlp.up_proj.weight' is missing (expected shape [256, "
                "128])");
}

TEST(CheckpointFixtureTest, ReportsWrongShape) {
  auto checkpoint = Checkpoint::Open(FixtureDir());
  ASSERT_TRUE(checkpoint.ok());
  const auto tensor = (*checkpoint)->Get("model.norm.weight", {64});
  ASSERT_FALSE(tensor.ok());
  EXPECT_EQ(tensor.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tensor.status().message(),
              AllOf(HasSubstr("model-00002-of-00002.safetensors"),
                    HasSubstr("'model.norm.weight'"), HasSubstr("[128]"), HasSubstr("[64]")));
  EXPECT_THAT((*checkpoint)->Unclaimed(), testing::Contains("model.norm.weight"));
}

TEST(CheckpointFixtureTest, ListsUnclaimedTensors) {
  auto checkpoint = Checkpoint::Open(FixtureDir());
  ASSERT_TRUE(checkpoint.ok());
  for (const auto& [name, tensor] : (*checkpoint)->tensors()) {
    if (name == "model.layers.2.self_attn.A_log" || name == "model.norm.weight") continue;
    ASSERT_TRUE((*checkpoint)->Get(name, tensor.entry->shape).ok()) << name;
  }
  EXPECT_THAT((*checkpoint)->Unclaimed(),
              ElementsAre("model.layers.2.self_attn.A_log", "model.norm.weight"));
}

TEST_F(CheckpointTest, OpensShardedDirectory) {
  WriteTwoShards(R"({"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"})");
  auto checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_THAT((*checkpoint)->Unclaimed(), ElementsAre("x", "y", "z"));
  const auto z = (*checkpoint)->Get("z", {5});
  ASSERT_TRUE(z.ok());
  EXPECT_EQ(*z->file, dir_ + "/b.safetensors");
}

TEST_F(CheckpointTest, OpensSingleFile) {
  ASSERT_TRUE(WriteShard(dir_ + "/model.safetensors", {{"only", {3}}}).ok());
  auto checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_TRUE((*checkpoint)->Has("only"));
  EXPECT_FALSE((*checkpoint)->Has("other"));
}

TEST_F(CheckpointTest, RejectsDirectoryWithoutWeights) {
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(dir_), HasSubstr("model.safetensors.index.json"),
                                      HasSubstr("model.safetensors ")));
}

TEST_F(CheckpointTest, RejectsIndexNamingMissingShard) {
  WriteTwoShards(
      R"({"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors","w":"c.safetensors"})");
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("'c.safetensors'"), HasSubstr("'w'"), HasSubstr(dir_)));
}

TEST_F(CheckpointTest, RejectsIndexListingTensorItsShardLacks) {
  WriteTwoShards(
      R"({"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors","w":"b.safetensors"})");
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(dir_ + "/b.safetensors"), HasSubstr("'w'"),
                                      HasSubstr("does not hold")));
}

TEST_F(CheckpointTest, RejectsShardHoldingTensorIndexLacks) {
  WriteTwoShards(R"({"x":"a.safetensors","z":"b.safetensors"})");
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(dir_ + "/a.safetensors"), HasSubstr("'y'"),
                                      HasSubstr("does not list")));
}

TEST_F(CheckpointTest, RejectsTensorInTwoShards) {
  ASSERT_TRUE(WriteShard(dir_ + "/a.safetensors", {{"x", {2}}}).ok());
  ASSERT_TRUE(WriteShard(dir_ + "/b.safetensors", {{"x", {2}}, {"z", {1}}}).ok());
  WriteFile(dir_ + "/model.safetensors.index.json",
            R"({"weight_map":{"x":"a.safetensors","z":"b.safetensors"}})");
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(dir_ + "/b.safetensors"), HasSubstr("'x'"),
                                      HasSubstr("assigns to shard 'a.safetensors'")));
}

TEST_F(CheckpointTest, RejectsShardOutsideDirectory) {
  for (const std::string shard : {"../a.safetensors", "sub/a.safetensors", "..", ""}) {
    SCOPED_TRACE(shard);
    WriteTwoShards(R"({"x":")" + shard + R"(","y":"a.safetensors","z":"b.safetensors"})");
    const absl::Status status = OpenStatus();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), AllOf(HasSubstr("model.safetensors.index.json"),
                                        HasSubstr("'x'"), HasSubstr("not a plain file name")));
  }
}

TEST_F(CheckpointTest, RejectsMalformedIndex) {
  for (const std::string index : {"{", "[]", R"({"weight_map":[]})", R"({"weight_map":{"x":1}})"}) {
    SCOPED_TRACE(index);
    WriteFile(dir_ + "/model.safetensors.index.json", index);
    const absl::Status status = OpenStatus();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(dir_ + "/model.safetensors.index.json"));
  }
}

TEST_F(CheckpointTest, RejectsBrokenConfig) {
  ASSERT_TRUE(WriteShard(dir_ + "/model.safetensors", {{"only", {3}}}).ok());
  WriteFile(dir_ + "/config.json", R"({"vocab_size": 512, "hidden_size": )");
  const absl::Status status = OpenStatus();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("config.json"));
}

TEST_F(CheckpointTest, RejectsMissingConfig) {
  std::filesystem::remove(dir_ + "/config.json");
  ASSERT_TRUE(WriteShard(dir_ + "/model.safetensors", {{"only", {3}}}).ok());
  const absl::Status status = OpenStatus();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("config.json"));
}

TEST_F(CheckpointTest, RejectsCorruptShardNamingIt) {
  WriteTwoShards(R"({"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"})");
  WriteFile(dir_ + "/b.safetensors", "garbage");
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr(dir_ + "/b.safetensors"));
}

}  // namespace
}  // namespace deltaserve::model
