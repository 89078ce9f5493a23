// Tests for services/common/grpc_status.h: code-preserving round trips and the canonical mapping.
#include "services/common/grpc_status.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/cord.h"

namespace deltaserve::services {
namespace {

TEST(GrpcStatusTest, OkRoundTrips) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  // An OK grpc::Status with a message is still OK.
  EXPECT_TRUE(FromGrpcStatus(grpc::Status(grpc::StatusCode::OK, "fine")).ok());
}

TEST(GrpcStatusTest, EveryCodeRoundTripsWithItsMessage) {
  for (int code = 1; code <= 16; ++code) {
    const absl::Status original(static_cast<absl::StatusCode>(code),
                                "message " + std::to_string(code));
    const grpc::Status wire = ToGrpcStatus(original);
    EXPECT_EQ(static_cast<int>(wire.error_code()), code);
    EXPECT_EQ(wire.error_message(), original.message());
    EXPECT_EQ(FromGrpcStatus(wire), original);
  }
}

TEST(GrpcStatusTest, OurPayloadsCrossAndOthersAreDropped) {
  absl::Status original = absl::InvalidArgumentError("sequence 3 is not open");
  const std::string ours = std::string(kCarriedPayloadPrefix) + "internal.v1.HiddenRowsReceived";
  original.SetPayload(ours, absl::Cord(""));
  original.SetPayload(std::string(kCarriedPayloadPrefix) + "Other", absl::Cord(std::string("a\0b", 3)));
  original.SetPayload("type.googleapis.com/someone.Else", absl::Cord("x"));
  EXPECT_TRUE(ToGrpcStatus(original).error_details().empty()) << "clients get the code and message";
  const grpc::Status wire = ToInternalGrpcStatus(original);
  EXPECT_FALSE(wire.error_details().empty());
  const absl::Status back = FromGrpcStatus(wire);
  EXPECT_EQ(back.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(back.message(), "sequence 3 is not open");
  ASSERT_TRUE(back.GetPayload(ours).has_value());
  EXPECT_EQ(std::string(*back.GetPayload(ours)), "");
  EXPECT_EQ(std::string(*back.GetPayload(std::string(kCarriedPayloadPrefix) + "Other")), std::string("a\0b", 3));
  EXPECT_FALSE(back.GetPayload("type.googleapis.com/someone.Else").has_value());

  EXPECT_TRUE(ToInternalGrpcStatus(absl::InternalError("plain")).error_details().empty());
  // Details that are not a google.rpc.Status leave the code and message alone.
  const absl::Status odd = FromGrpcStatus(grpc::Status(grpc::StatusCode::INTERNAL, "odd", "\xff\xff\xff"));
  EXPECT_EQ(odd, absl::InternalError("odd"));
}

TEST(GrpcStatusTest, NamedCodesMatch) {
  EXPECT_EQ(ToGrpcStatus(absl::ResourceExhaustedError("x")).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone")).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::DATA_LOSS, "bad")).code(),
            absl::StatusCode::kDataLoss);
}

TEST(GrpcStatusTest, OutOfRangeCodeBecomesUnknown) {
  const absl::Status status =
      FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(42), "odd"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(status.message(), "odd");
}

TEST(GrpcStatusTest, AnnotateKeepsCode) {
  const absl::Status status =
      AnnotateStatus(absl::UnavailableError("connection refused"), "stage 1");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "stage 1: connection refused");
  EXPECT_TRUE(AnnotateStatus(absl::OkStatus(), "stage 1").ok());
}

TEST(GrpcStatusTest, CanonicalMapping) {
  EXPECT_EQ(BadRequestError("token_ids is empty").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UnknownSessionError("s1").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(OtherTenantSessionError("s1").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(QueueFullError("request", 64).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(WorkerGoneError("stage 2", "connection reset").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(DeadlineError("generate").code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ClientCancelledError("generate").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(BugError("negative slot").code(), absl::StatusCode::kInternal);
  EXPECT_EQ(StaleSnapshotError("s1", "fingerprint mismatch").code(), absl::StatusCode::kDataLoss);

  EXPECT_NE(UnknownSessionError("sess-7").message().find("sess-7"), absl::string_view::npos);
  EXPECT_NE(QueueFullError("request", 64).message().find("64"), absl::string_view::npos);
  EXPECT_TRUE(ShouldRecompute(StaleSnapshotError("s1", "checksum")));
  EXPECT_FALSE(ShouldRecompute(WorkerGoneError("store", "down")));
  EXPECT_FALSE(ShouldRecompute(absl::OkStatus()));
}

}  // namespace
}  // namespace deltaserve::services
