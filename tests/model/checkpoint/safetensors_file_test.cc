// SafetensorsFile and WriteSafetensors: round trips of every dtype, and rejection of every kind
// of malformed file with an error naming the file and the tensor.
#include "model/checkpoint/safetensors_file.h"

#include <sys/resource.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint/safetensors_writer.h"
#include "tests/model/checkpoint/checkpoint_test_util.h"

namespace deltaserve::model {
namespace {

using kernels::DType;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testing_util::MakeTempDir;
using testing_util::ReadFile;
using testing_util::WriteFile;

// Length prefix + header + `data_bytes` zero bytes.
std::string RawFile(const std::string& header, size_t data_bytes) {
  std::string bytes(8, '\0');
  const uint64_t size = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  bytes += header;
  bytes.append(data_bytes, '\0');
  return bytes;
}

class SafetensorsFileTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }

  // Writes `bytes` as NAME.safetensors and opens it.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenBytes(const std::string& name,
                                                             const std::string& bytes) {
    path_ = dir_ + "/" + name + ".safetensors";
    WriteFile(path_, bytes);
    return SafetensorsFile::Open(path_);
  }

  void ExpectRejected(const std::string& header, size_t data_bytes, const std::string& tensor,
                      const std::string& detail) {
    const auto file = OpenBytes("bad", RawFile(header, data_bytes));
    ASSERT_FALSE(file.ok()) << header;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    EXPECT_THAT(file.status().message(),
                AllOf(HasSubstr(path_), HasSubstr("'" + tensor + "'"), HasSubstr(detail)));
  }

  std::string dir_;
  std::string path_;
};

TensorToWrite Sequence(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  return {name, dtype, std::move(shape), [dtype](int64_t first, int64_t count, void* dst) {
            auto* bytes = static_cast<unsigned char*>(dst);
            for (int64_t i = 0; i < count; ++i) {
              const float value = 0.5f * static_cast<float>(first + i) - 3.0f;
              if (dtype == DType::kF32) {
                std::memcpy(bytes + 4 * i, &value, 4);
              } else {
                const uint16_t bits = dtype == DType::kBF16 ? kernels::F32ToBF16(value)
                                                            : kernels::F32ToF16(value);
                std::memcpy(bytes + 2 * i, &bits, 2);
              }
            }
            return absl::OkStatus();
          }};
}

TEST_F(SafetensorsFileTest, RoundTripsEveryDtype) {
  const std::string path = dir_ + "/round_trip.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {Sequence("a.f32", DType::kF32, {2, 3}),
                                      Sequence("b.bf16", DType::kBF16, {5}),
                                      Sequence("c.f16", DType::kF16, {2, 1, 2}),
                                      Sequence("d.empty", DType::kBF16, {0, 7})})
                  .ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  const std::string raw = ReadFile(path);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ((8 + header_size) % 8, 0u) << "data area must start 8-byte aligned";
  EXPECT_EQ(raw[8], '{');

  const auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const auto& tensors = (*file)->tensors();
  ASSERT_EQ(tensors.size(), 4u);

  const TensorEntry& f32 = tensors.at("a.f32");
  EXPECT_EQ(f32.dtype, DType::kF32);
  EXPECT_EQ(f32.shape, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(f32.num_bytes, 24u);
  for (int i = 0; i < 6; ++i) {
    float value;
    std::memcpy(&value, static_cast<const char*>(f32.data) + 4 * i, 4);
    EXPECT_EQ(value, 0.5f * i - 3.0f);
  }
  const TensorEntry& bf16 = tensors.at("b.bf16");
  EXPECT_EQ(bf16.dtype, DType::kBF16);
  ASSERT_EQ(bf16.num_bytes, 10u);
  std::vector<float> values(5);
  kernels::ConvertToF32(bf16.data, DType::kBF16, values.data(), 5);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(values[i], 0.5f * i - 3.0f);

  const TensorEntry& f16 = tensors.at("c.f16");
  EXPECT_EQ(f16.dtype, DType::kF16);
  EXPECT_EQ(f16.shape, (std::vector<int64_t>{2, 1, 2}));
  ASSERT_EQ(f16.num_bytes, 8u);
  values.resize(4);
  kernels::ConvertToF32(f16.data, DType::kF16, values.data(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(values[i], 0.5f * i - 3.0f);

  EXPECT_EQ(tensors.at("d.empty").num_bytes, 0u);
}

TEST_F(SafetensorsFileTest, ReadsHeaderWithoutMetadata) {
  const auto file = OpenBytes(
      "plain", RawFile(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->metadata().empty());
  EXPECT_EQ((*file)->tensors().at("x").shape, (std::vector<int64_t>{2}));
}

TEST_F(SafetensorsFileTest, RejectsMissingFile) {
  const auto file = SafetensorsFile::Open(dir_ + "/nope.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr(dir_ + "/nope.safetensors"));
}

TEST_F(SafetensorsFileTest, RejectsEmptyFile) {
  const auto file = OpenBytes("empty", "");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path_), HasSubstr("0 bytes")));
}

TEST_F(SafetensorsFileTest, RejectsTruncatedData) {
  const std::string path = dir_ + "/whole.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {Sequence("first", DType::kF32, {4}),
                                      Sequence("last", DType::kBF16, {16})})
                  .ok());
  std::string bytes = ReadFile(path);
  bytes.resize(bytes.size() - 3);
  const auto file = OpenBytes("truncated", bytes);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(),
              AllOf(HasSubstr(path_), HasSubstr("'last'"), HasSubstr("data area")));
}

TEST_F(SafetensorsFileTest, RejectsHeaderLengthPastEnd) {
  std::string bytes = RawFile(R"({})", 0);
  bytes[0] = static_cast<char>(200);  // claims 200 header bytes in a 10-byte file
  const auto file = OpenBytes("long_header", bytes);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path_), HasSubstr("header length 200")));
}

TEST_F(SafetensorsFileTest, RejectsHugeHeaderLength) {
  std::string bytes = RawFile(R"({})", 0);
  bytes[5] = 1;  // 2^40 + 2
  const auto file = OpenBytes("huge_header", bytes);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path_), HasSubstr("exceeds the limit")));
}

TEST_F(SafetensorsFileTest, RejectsBadJson) {
  const auto file = OpenBytes("bad_json", RawFile(R"({"x": {"dtype": "F32", )", 0));
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path_), HasSubstr("not valid JSON")));
}

TEST_F(SafetensorsFileTest, RejectsNonObjectJson) {
  const auto file = OpenBytes("array", RawFile(R"([1, 2, 3])", 0));
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path_), HasSubstr("not an object")));
}

TEST_F(SafetensorsFileTest, RejectsUnknownDtypes) {
  for (const std::string dtype : {"F64", "I8", "BOOL", "bf16"}) {
    SCOPED_TRACE(dtype);
    ExpectRejected(R"({"w":{"dtype":")" + dtype + R"(","shape":[1],"data_offsets":[0,8]}})", 8,
                   "w", dtype);
  }
}

TEST_F(SafetensorsFileTest, RejectsNegativeOrNonIntegerShape) {
  ExpectRejected(R"({"neg":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,0]}})", 0, "neg",
                 "non-negative");
  ExpectRejected(R"({"frac":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4, "frac",
                 "non-negative");
  ExpectRejected(R"({"str":{"dtype":"F32","shape":"[1]","data_offsets":[0,4]}})", 4, "str",
                 "not an array");
}

TEST_F(SafetensorsFileTest, RejectsOverflowingShape) {
  ExpectRejected(
      R"({"big":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0, "big",
      "overflows");
}

TEST_F(SafetensorsFileTest, RejectsOffsetsPastEnd) {
  ExpectRejected(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 12, "w",
                 "outside the 12-byte data area");
  ExpectRejected(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[9,8]}})", 12, "w",
                 "outside");
}

TEST_F(SafetensorsFileTest, RejectsMalformedOffsets) {
  ExpectRejected(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4, "w",
                 "data_offsets");
  ExpectRejected(R"({"w":{"dtype":"F32","shape":[1]}})", 4, "w", "no data_offsets");
}

TEST_F(SafetensorsFileTest, RejectsSizeMismatch) {
  ExpectRejected(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", 16, "w",
                 "needs 8");
}

TEST_F(SafetensorsFileTest, RejectsOverlappingTensors) {
  ExpectRejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 12, "b", "overlap tensor 'a'");
}

TEST_F(SafetensorsFileTest, RejectsDuplicateNames) {
  ExpectRejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 8, "a", "twice");
}

TEST_F(SafetensorsFileTest, RejectsNonStringMetadata) {
  const auto file = OpenBytes("meta", RawFile(R"({"__metadata__":{"format":1}})", 0));
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), AllOf(HasSubstr(path_), HasSubstr("'format'")));
}

TEST_F(SafetensorsFileTest, EveryTruncationIsRejected) {
  const std::string path = dir_ + "/whole.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {Sequence("a", DType::kF32, {3}),
                                      Sequence("b", DType::kBF16, {2, 2})})
                  .ok());
  const std::string bytes = ReadFile(path);
  for (size_t size = 0; size < bytes.size(); ++size) {
    const auto file = OpenBytes("cut", bytes.substr(0, size));
    ASSERT_FALSE(file.ok()) << size;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << size;
  }
}

// Corrupted headers must be rejected or describe bytes inside the file.
TEST_F(SafetensorsFileTest, SurvivesCorruptedHeaders) {
  const std::string path = dir_ + "/whole.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {Sequence("a", DType::kF32, {3}),
                                      Sequence("b", DType::kF16, {2, 2})})
                  .ok());
  const std::string original = ReadFile(path);
  uint64_t state = 12345;
  const auto next = [&state]() {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return state >> 33;
  };
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes = original;
    const int flips = 1 + static_cast<int>(next() % 3);
    for (int f = 0; f < flips; ++f) {
      bytes[next() % bytes.size()] = "0123456789[]{},:\"-eE. \x80"[next() % 23];
    }
    const auto file = OpenBytes("corrupt", bytes);
    if (!file.ok()) {
      EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
      continue;
    }
    for (const auto& [name, entry] : (*file)->tensors()) {
      const auto* data = static_cast<const char*>(entry.data);
      uint64_t count = 1;
      for (const int64_t dim : entry.shape) count *= static_cast<uint64_t>(dim);
      EXPECT_EQ(entry.num_bytes, count * kernels::DTypeSize(entry.dtype)) << name;
      volatile char sink = 0;
      for (uint64_t i = 0; i < entry.num_bytes; ++i) sink = sink ^ data[i];  // faults if outside
    }
  }
}

TEST_F(SafetensorsFileTest, WriterRejectsBadInput) {
  const std::string path = dir_ + "/bad_input.safetensors";
  absl::Status status =
      WriteSafetensors(path, {Sequence("x", DType::kF32, {1}), Sequence("x", DType::kF32, {1})});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(path), HasSubstr("'x'")));

  status = WriteSafetensors(path, {Sequence("neg", DType::kF32, {-2})});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'neg'"));

  status = WriteSafetensors(path, {Sequence("int", DType::kI32, {2})});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'int'"));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST_F(SafetensorsFileTest, WriterReportsMissingDirectory) {
  const std::string path = dir_ + "/no/such/dir/x.safetensors";
  const absl::Status status = WriteSafetensors(path, {Sequence("x", DType::kF32, {1})});
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr(path + ".tmp"));
}

TEST_F(SafetensorsFileTest, WriterPropagatesFillErrors) {
  const std::string path = dir_ + "/fill_error.safetensors";
  TensorToWrite broken = Sequence("broken", DType::kF32, {4});
  broken.fill = [](int64_t, int64_t, void*) { return absl::InternalError("boom"); };
  const absl::Status status = WriteSafetensors(path, {broken});
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(), AllOf(HasSubstr(path), HasSubstr("'broken'"), HasSubstr("boom")));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

// A file-size limit makes write() fail with EFBIG, as a full disk fails with ENOSPC: the writer
// must report it, name the file, and leave neither the file nor its .tmp behind.
TEST_F(SafetensorsFileTest, WriterReportsWriteFailure) {
  const std::string path = dir_ + "/too_big.safetensors";
  struct rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limited = saved;
  limited.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  const absl::Status status = WriteSafetensors(path, {Sequence("big", DType::kF32, {1 << 16})});
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous_handler);

  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(status.message(), AllOf(HasSubstr(path), HasSubstr("write failed")));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

}  // namespace
}  // namespace deltaserve::model
