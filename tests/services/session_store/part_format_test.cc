// The disk tier's file formats: round trips, and every damage decoded as DATA_LOSS.
#include "services/session_store/part_format.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/services/session_store/store_test_util.h"

namespace deltaserve::services {
namespace {

using testing::Must;

PartHeader SampleHeader() {
  PartHeader header;
  header.tenant = "acme";
  header.session_id = "conv-1";
  header.part = "layers-0-13";
  header.kind = PartKind::kState;
  header.payload_bytes = 12345;
  header.payload_crc32 = 0xdeadbeef;
  header.written_unix_ms = 1'700'000'000'123;
  header.num_tokens = 77;
  header.model_fingerprint = 0x0123456789abcdefULL;
  header.layer_begin = 0;
  header.layer_end = 14;
  return header;
}

TEST(PartFormatTest, PartHeaderRoundTripsAndIsLittleEndian) {
  const std::string bytes = EncodePartHeader(SampleHeader());
  EXPECT_EQ(bytes.size(), kPartHeaderFixedBytes + 4 + 6 + 11 + 4);
  EXPECT_EQ(bytes.substr(0, 8), "DSPART01");
  EXPECT_EQ(bytes[8], 1);  // format version, low byte first
  EXPECT_EQ(bytes[9], 0);
  size_t header_bytes = 0;
  const PartHeader decoded = Must(DecodePartHeader(bytes + "payload follows", &header_bytes));
  EXPECT_EQ(header_bytes, bytes.size());
  EXPECT_EQ(decoded.tenant, "acme");
  EXPECT_EQ(decoded.session_id, "conv-1");
  EXPECT_EQ(decoded.part, "layers-0-13");
  EXPECT_EQ(decoded.kind, PartKind::kState);
  EXPECT_EQ(decoded.payload_bytes, 12345u);
  EXPECT_EQ(decoded.payload_crc32, 0xdeadbeefu);
  EXPECT_EQ(decoded.written_unix_ms, 1'700'000'000'123);
  EXPECT_EQ(decoded.num_tokens, 77);
  EXPECT_EQ(decoded.model_fingerprint, 0x0123456789abcdefULL);
  EXPECT_EQ(decoded.layer_end, 14);
}

TEST(PartFormatTest, EveryFlippedHeaderByteIsDataLoss) {
  const std::string bytes = EncodePartHeader(SampleHeader());
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string damaged = bytes;
    damaged[i] = static_cast<char>(damaged[i] ^ 0x40);
    size_t header_bytes = 0;
    EXPECT_CODE(DecodePartHeader(damaged, &header_bytes), kDataLoss);
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    size_t header_bytes = 0;
    EXPECT_CODE(DecodePartHeader(bytes.substr(0, n), &header_bytes), kDataLoss);
  }
}

TEST(PartFormatTest, SessionMetaRoundTripsAndRefusesDamage) {
  const SessionMeta meta{"acme", "conv-1", 1000, 2000};
  const std::string bytes = EncodeSessionMeta(meta);
  const SessionMeta decoded = Must(DecodeSessionMeta(bytes));
  EXPECT_EQ(decoded.tenant, "acme");
  EXPECT_EQ(decoded.session_id, "conv-1");
  EXPECT_EQ(decoded.created_unix_ms, 1000);
  EXPECT_EQ(decoded.last_used_unix_ms, 2000);
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string damaged = bytes;
    damaged[i] = static_cast<char>(damaged[i] ^ 0x01);
    EXPECT_CODE(DecodeSessionMeta(damaged), kDataLoss);
  }
  EXPECT_CODE(DecodeSessionMeta(bytes.substr(0, bytes.size() - 1)), kDataLoss);
  EXPECT_CODE(DecodeSessionMeta(bytes + "x"), kDataLoss);
  EXPECT_CODE(DecodeSessionMeta(""), kDataLoss);
}

TEST(PartFormatTest, Crc32MatchesZlib) {
  EXPECT_EQ(Crc32(""), 0u);
  EXPECT_EQ(Crc32("123456789"), 0xcbf43926u);  // the CRC-32 check value
}

}  // namespace
}  // namespace deltaserve::services
