// Random sources: `random:<preset>[:<seed>]` opens as the very checkpoint init-model writes (bytes,
// config and fingerprints), generates a tensor only when claimed, and frees it on Release.
#include "model/checkpoint/generated_tensors.h"

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint/checkpoint.h"
#include "model/checkpoint/random_checkpoint.h"
#include "model/checkpoint/tensor_specs.h"
#include "model/config/presets.h"
#include "tests/model/checkpoint/checkpoint_test_util.h"

namespace deltaserve::model {
namespace {

using ::testing::HasSubstr;
using testing_util::MakeTempDir;
using testing_util::TinyConfig;

std::unique_ptr<Checkpoint> OpenOrDie(const std::string& source) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(source);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  return checkpoint.ok() ? *std::move(checkpoint) : nullptr;
}

TEST(GeneratedTensorsTest, RandomSourceEqualsTheCheckpointInitModelWrites) {
  const std::string dir = MakeTempDir() + "/tiny";
  ASSERT_TRUE(WriteRandomCheckpoint(*PresetConfig("tiny"), 7, dir).ok());
  std::unique_ptr<Checkpoint> disk = OpenOrDie(dir);
  std::unique_ptr<Checkpoint> generated = OpenOrDie("random:tiny:7");
  ASSERT_NE(disk, nullptr);
  ASSERT_NE(generated, nullptr);

  EXPECT_TRUE(generated->is_generated());
  EXPECT_FALSE(disk->is_generated());
  EXPECT_EQ(generated->dir(), "random:tiny:7");
  EXPECT_TRUE(generated->config() == disk->config());
  EXPECT_EQ(generated->WeightsFingerprint(), disk->WeightsFingerprint());
  EXPECT_EQ(generated->ModelFingerprint(), disk->ModelFingerprint());
  ASSERT_EQ(generated->tensors().size(), disk->tensors().size());
  for (const auto& [name, tensor] : disk->tensors()) {
    SCOPED_TRACE(name);
    const TensorEntry& expected = *tensor.entry;
    absl::StatusOr<CheckpointTensor> got = generated->Get(name, expected.shape);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->entry->dtype, expected.dtype);
    ASSERT_EQ(got->entry->num_bytes, expected.num_bytes);
    EXPECT_EQ(std::memcmp(got->entry->data, expected.data, expected.num_bytes), 0);
  }
  EXPECT_TRUE(generated->Unclaimed().empty());
}

TEST(GeneratedTensorsTest, SeedDefaultsToZeroAndChangesTheWeights) {
  const std::unique_ptr<Checkpoint> implicit = OpenOrDie("random:tiny");
  const std::unique_ptr<Checkpoint> zero = OpenOrDie("random:tiny:0");
  const std::unique_ptr<Checkpoint> one = OpenOrDie("random:tiny:1");
  EXPECT_EQ(implicit->ModelFingerprint(), zero->ModelFingerprint());
  EXPECT_NE(zero->WeightsFingerprint(), one->WeightsFingerprint());
}

TEST(GeneratedTensorsTest, TheReleaseShapeFingerprintsWithoutGeneratingItsWeights) {
  const std::unique_ptr<Checkpoint> first = OpenOrDie("random:kimi-linear-48b-a3b");
  const std::unique_ptr<Checkpoint> second = OpenOrDie("random:kimi-linear-48b-a3b");
  const std::unique_ptr<Checkpoint> all_mla = OpenOrDie("random:kimi-linear-48b-a3b-all-mla");
  EXPECT_EQ(first->tensors().size(), 20'493u);  // spec §0
  EXPECT_EQ(first->ModelFingerprint(), second->ModelFingerprint());
  EXPECT_NE(first->ModelFingerprint(), all_mla->ModelFingerprint());
  EXPECT_EQ(first->generated_bytes_held(), 0u);
}

TEST(GeneratedTensorsTest, GeneratesOnGetAndFreesOnRelease) {
  std::unique_ptr<Checkpoint> checkpoint = OpenOrDie("random:tiny:3");
  EXPECT_EQ(checkpoint->generated_bytes_held(), 0u);
  for (const auto& [name, tensor] : checkpoint->tensors()) EXPECT_EQ(tensor.entry->data, nullptr);

  const std::string name = "model.embed_tokens.weight";
  const std::vector<int64_t> shape = {512, 128};
  absl::StatusOr<CheckpointTensor> first = checkpoint->Get(name, shape);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_NE(first->entry->data, nullptr);
  EXPECT_EQ(checkpoint->generated_bytes_held(), 512u * 128 * 2);
  const std::vector<unsigned char> bytes(
      static_cast<const unsigned char*>(first->entry->data),
      static_cast<const unsigned char*>(first->entry->data) + first->entry->num_bytes);

  checkpoint->Release(name);
  EXPECT_EQ(checkpoint->generated_bytes_held(), 0u);
  EXPECT_EQ(checkpoint->tensors().at(name).entry->data, nullptr);

  absl::StatusOr<CheckpointTensor> again = checkpoint->Get(name, shape);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(std::memcmp(again->entry->data, bytes.data(), bytes.size()), 0);
  checkpoint->Release("no.such.tensor");  // nothing to do
  EXPECT_EQ(checkpoint->generated_bytes_held(), bytes.size());
}

TEST(GeneratedTensorsTest, ReleaseLeavesAMappedCheckpointAlone) {
  std::unique_ptr<Checkpoint> checkpoint = OpenOrDie(testing_util::FixtureDir());
  const std::string name = "model.norm.weight";
  absl::StatusOr<CheckpointTensor> tensor = checkpoint->Get(name, {128});
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  const void* data = tensor->entry->data;
  checkpoint->Release(name);
  EXPECT_EQ(checkpoint->tensors().at(name).entry->data, data);
  EXPECT_EQ(checkpoint->generated_bytes_held(), 0u);
}

TEST(GeneratedTensorsTest, WrongShapeIsRefusedWithoutGenerating) {
  std::unique_ptr<Checkpoint> checkpoint = OpenOrDie("random:tiny");
  const absl::Status status = checkpoint->Get("model.norm.weight", {64}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("random:tiny"));
  EXPECT_EQ(checkpoint->generated_bytes_held(), 0u);
  EXPECT_EQ(checkpoint->Get("model.nope", {1}).status().code(), absl::StatusCode::kNotFound);
}

TEST(GeneratedTensorsTest, BadSourcesAreInvalidArgumentNamingThePresets) {
  for (const std::string source : {"random:", "random:huge", "random:tiny:", "random:tiny:x",
                                   "random:tiny:-1", "random:tiny:1:2"}) {
    SCOPED_TRACE(source);
    const absl::Status status = Checkpoint::Open(source).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()), HasSubstr(source));
  }
  const absl::Status unknown = Checkpoint::Open("random:huge").status();
  EXPECT_THAT(std::string(unknown.message()), HasSubstr("kimi-linear-48b-a3b-all-mla"));
}

TEST(GeneratedTensorsTest, OpenRandomRefusesAnInvalidConfig) {
  KimiLinearConfig config = TinyConfig();
  config.hidden_size = 0;
  const absl::Status status = Checkpoint::OpenRandom(config, 0, "mine").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("mine"));
}

TEST(GeneratedTensorsTest, CopyBytesMatchesTheHeldTensorAtAnyByteRange) {
  const KimiLinearConfig config = TinyConfig();
  GeneratedTensors tensors(config, 11, 3);
  for (const std::string name : {"model.embed_tokens.weight", "model.layers.0.self_attn.A_log"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<const TensorEntry*> held = tensors.Hold(name);
    ASSERT_TRUE(held.ok()) << held.status();
    const auto* data = static_cast<const unsigned char*>((*held)->data);
    const uint64_t size = (*held)->num_bytes;
    for (const uint64_t offset : {uint64_t{0}, uint64_t{1}, uint64_t{3}, size / 3, size - 5}) {
      const uint64_t length = std::min<uint64_t>(64, size - offset);
      std::vector<unsigned char> copy(length);
      tensors.CopyBytes(name, offset, length, copy.data());
      EXPECT_EQ(std::memcmp(copy.data(), data + offset, length), 0) << offset;
    }
  }
}

TEST(GeneratedTensorsTest, ThreadCountDoesNotChangeTheBytes) {
  KimiLinearConfig config = TinyConfig();
  config.vocab_size = 8192;  // an embedding large enough to be split over threads
  GeneratedTensors one(config, 5, 1);
  GeneratedTensors many(config, 5, 4);
  const std::string name = "model.embed_tokens.weight";
  absl::StatusOr<const TensorEntry*> a = one.Hold(name);
  absl::StatusOr<const TensorEntry*> b = many.Hold(name);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(std::memcmp((*a)->data, (*b)->data, (*a)->num_bytes), 0);
  EXPECT_EQ(many.held_bytes(), (*b)->num_bytes);
}

}  // namespace
}  // namespace deltaserve::model
