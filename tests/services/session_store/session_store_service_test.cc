// The StoreClient contract, in process (LocalStoreClient) and through the gRPC service on
// 127.0.0.1 (GrpcStoreClient, parts in chunks through gRPC's default message limits): same
// results, same status codes and messages; transport failures as UNAVAILABLE /
// DEADLINE_EXCEEDED; malformed chunk streams rejected.
#include "services/session_store/session_store_service.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "services/session_store/snapshot_store.h"
#include "services/session_store/store_client.h"
#include "tests/services/session_store/store_test_util.h"

namespace deltaserve::services {
namespace {

using testing::BuildStateSnapshot;
using testing::FakeClock;
using testing::FlipByte;
using testing::Must;
using testing::TempDir;
using testing::TestBytes;

constexpr int64_t kMaxPartBytes = 8 << 20;

// A SessionStore service on 127.0.0.1, on a port the kernel picks.
class StoreServer {
 public:
  explicit StoreServer(SnapshotStore& store) : service_(store) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~StoreServer() { Shutdown(); }
  void Shutdown() {
    if (server_ != nullptr) server_->Shutdown();
  }
  bool ok() const { return server_ != nullptr && port_ > 0; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  SessionStoreService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

enum class Transport { kLocal, kGrpc };

class StoreClientContractTest : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    SnapshotStoreOptions options;
    options.data_dir = dir_.path() + "/store";
    options.memory_limit_bytes = 16 << 20;
    options.max_part_bytes = kMaxPartBytes;
    options.clock = &clock_;
    store_ = Must(SnapshotStore::Open(options));
    if (GetParam() == Transport::kLocal) {
      client_ = std::make_unique<LocalStoreClient>(*store_);
    } else {
      server_ = std::make_unique<StoreServer>(*store_);
      ASSERT_TRUE(server_->ok());
      client_ = std::make_unique<GrpcStoreClient>(
          CreateStoreChannel(server_->target()), GrpcStoreClientOptions{});
    }
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
  }
  std::string PartPath(const std::string& session, const std::string& part) const {
    return dir_.path() + "/store/sessions/" + session + "/" + part + ".part";
  }

  TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<SnapshotStore> store_;
  std::unique_ptr<StoreServer> server_;
  StoreClientPtr client_;
};

INSTANTIATE_TEST_SUITE_P(Transports, StoreClientContractTest,
                         ::testing::Values(Transport::kLocal, Transport::kGrpc),
                         [](const ::testing::TestParamInfo<Transport>& transport) {
                           return transport.param == Transport::kLocal ? "Local" : "Grpc";
                         });

TEST_P(StoreClientContractTest, RoundTripsLargePartsAndMetadata) {
  StoreClient& client = *client_;
  const SessionInfo created = Must(client.CreateSession("acme", "conv-1", true));
  EXPECT_EQ(created.tenant, "acme");
  EXPECT_EQ(created.created_unix_ms, clock_.NowUnixMs());
  // Larger than gRPC's default 4 MiB message limit.
  const std::string state = BuildStateSnapshot(99, 0, 14, {1, 2, 3, 4}, TestBytes(6 << 20, 7));
  const PartInfo put =
      Must(client.PutPart("acme", "conv-1", "layers-0-13", PartKind::kState, state));
  EXPECT_EQ(put.bytes, static_cast<int64_t>(state.size()));
  EXPECT_EQ(put.num_tokens, 4);
  EXPECT_EQ(put.model_fingerprint, 99u);
  EXPECT_EQ(put.layer_end, 14);
  EXPECT_EQ(put.tier, Tier::kMemory);
  Must(client.PutPart("acme", "conv-1", "manifest", PartKind::kBlob, "manifest bytes"));
  // Exactly two chunks, and no payload at all (one chunk carrying only the header).
  Must(client.CreateSession("acme", "chunks", true));
  const std::string two_chunks = TestBytes(2 * kStoreChunkBytes, 3);
  Must(client.PutPart("acme", "chunks", "even", PartKind::kBlob, two_chunks));
  EXPECT_EQ(Must(client.GetPart("acme", "chunks", "even")).payload, two_chunks);
  Must(client.PutPart("acme", "chunks", "empty", PartKind::kBlob, ""));
  const Part empty = Must(client.GetPart("acme", "chunks", "empty"));
  EXPECT_EQ(empty.payload, "");
  EXPECT_EQ(empty.info.bytes, 0);
  Must(client.DeleteSession("acme", "chunks"));

  const Part got = Must(client.GetPart("acme", "conv-1", "layers-0-13"));
  EXPECT_EQ(got.payload, state);
  EXPECT_EQ(got.info.kind, PartKind::kState);
  EXPECT_EQ(got.info.num_tokens, 4);
  const SessionInfo stat = Must(client.StatSession("acme", "conv-1"));
  ASSERT_EQ(stat.parts.size(), 2u);
  EXPECT_EQ(stat.parts[1].name, "manifest");
  EXPECT_EQ(stat.parts[1].kind, PartKind::kBlob);

  const SessionInfo fork = Must(client.CopySession("acme", "conv-1", "conv-2"));
  EXPECT_EQ(fork.parts.size(), 2u);
  const SessionPage page1 = Must(client.ListSessions("acme", 1, ""));
  ASSERT_EQ(page1.sessions.size(), 1u);
  EXPECT_EQ(page1.sessions[0].session_id, "conv-1");
  EXPECT_EQ(page1.next_page_token, "conv-1");
  const SessionPage page2 = Must(client.ListSessions("acme", 1, page1.next_page_token));
  ASSERT_EQ(page2.sessions.size(), 1u);
  EXPECT_EQ(page2.sessions[0].session_id, "conv-2");
  EXPECT_TRUE(page2.next_page_token.empty());
  Must(client.DeleteSession("acme", "conv-1"));
  EXPECT_EQ(Must(client.GetPart("acme", "conv-2", "manifest")).payload, "manifest bytes");
}

TEST_P(StoreClientContractTest, StatusCodesAndMessagesSurvive) {
  StoreClient& client = *client_;
  Must(client.CreateSession("acme", "mine", true));
  Must(client.CreateSession("globex", "theirs", true));
  Must(client.PutPart("acme", "mine", "manifest", PartKind::kBlob, "m"));

  const absl::StatusOr<Part> missing = client.GetPart("acme", "nope", "manifest");
  EXPECT_CODE(missing, kNotFound);
  EXPECT_NE(missing.status().message().find("nope"), std::string::npos) << missing.status();
  EXPECT_CODE(client.GetPart("acme", "mine", "nothing"), kNotFound);
  EXPECT_CODE(client.StatSession("acme", "nope"), kNotFound);
  EXPECT_CODE(client.DeleteSession("acme", "nope"), kNotFound);

  EXPECT_CODE(client.GetPart("acme", "theirs", "manifest"), kPermissionDenied);
  EXPECT_CODE(client.PutPart("globex", "mine", "manifest", PartKind::kBlob, "x"),
              kPermissionDenied);
  EXPECT_CODE(client.StatSession("globex", "mine"), kPermissionDenied);
  EXPECT_CODE(client.DeleteSession("globex", "mine"), kPermissionDenied);
  EXPECT_CODE(client.CopySession("globex", "mine", "x"), kPermissionDenied);
  EXPECT_CODE(client.CreateSession("globex", "mine", false), kPermissionDenied);
  EXPECT_EQ(Must(client.ListSessions("globex", 0, "")).sessions.size(), 1u);

  EXPECT_CODE(client.CreateSession("acme", "mine", true), kAlreadyExists);
  EXPECT_CODE(client.CopySession("acme", "mine", "mine"), kAlreadyExists);

  EXPECT_CODE(client.CreateSession("acme", "../etc", true), kInvalidArgument);
  EXPECT_CODE(client.CreateSession("", "s", true), kInvalidArgument);
  EXPECT_CODE(client.PutPart("acme", "mine", "layers-0-1", PartKind::kState, "not a snapshot"),
              kInvalidArgument);
  EXPECT_CODE(client.PutPart("acme", "mine", "x", static_cast<PartKind>(0), "x"), kInvalidArgument);
  EXPECT_CODE(client.ListSessions("acme", 1, "bad/token"), kInvalidArgument);

  const absl::StatusOr<PartInfo> too_big =
      client.PutPart("acme", "mine", "big", PartKind::kBlob, std::string(kMaxPartBytes + 1, 'b'));
  EXPECT_CODE(too_big, kResourceExhausted);
  EXPECT_NE(too_big.status().message().find("max_part_bytes"), std::string::npos)
      << too_big.status();
}

TEST_P(StoreClientContractTest, DamagedPartIsDataLoss) {
  StoreClient& client = *client_;
  Must(client.CreateSession("acme", "s", true));
  Must(client.PutPart("acme", "s", "layers-0-1", PartKind::kState,
                      BuildStateSnapshot(1, 0, 2, {4}, TestBytes(100, 1))));
  // Reopen the store so the part is read from disk, then damage it.
  server_.reset();
  client_.reset();
  store_.reset();
  FlipByte(PartPath("s", "layers-0-1"), -3);
  SetUp();
  EXPECT_CODE(client_->GetPart("acme", "s", "layers-0-1"), kDataLoss);
  EXPECT_CODE(client_->GetPart("acme", "s", "layers-0-1"), kNotFound);
  Must(client_->CreateSession("acme", "s", false));
}

TEST(GrpcStoreClientTest, StoreThatIsGoneIsUnavailable) {
  TempDir dir;
  SnapshotStoreOptions options;
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  std::string target;
  {
    StoreServer server(*store);
    ASSERT_TRUE(server.ok());
    target = server.target();
    GrpcStoreClient client(CreateStoreChannel(target));
    Must(client.CreateSession("acme", "s", true));
  }
  GrpcStoreClient client(CreateStoreChannel(target), {.timeout_ms = 5'000});
  const absl::StatusOr<SessionInfo> info = client.StatSession("acme", "s");
  EXPECT_CODE(info, kUnavailable);
  EXPECT_NE(info.status().message().find("StatSession"), std::string::npos) << info.status();
}

TEST(GrpcStoreClientTest, CallPastItsDeadlineIsDeadlineExceeded) {
  // A socket that listens but never speaks HTTP/2: the call waits until its deadline.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string target = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  GrpcStoreClient client(CreateStoreChannel(target), {.timeout_ms = 300});
  EXPECT_CODE(client.GetPart("acme", "s", "manifest"), kDeadlineExceeded);
  ::close(fd);
}

// PutPart streams that do not match what their first chunk announces, straight through the stub:
// each is refused with a clear status and the store keeps serving.
TEST(SessionStoreServiceTest, MalformedPutPartStreamsAreRefused) {
  namespace pb = ::deltaserve::internal::v1;
  TempDir dir;
  SnapshotStoreOptions options;
  options.max_part_bytes = kMaxPartBytes;
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  StoreServer server(*store);
  ASSERT_TRUE(server.ok());
  GrpcStoreClient client(CreateStoreChannel(server.target()));
  Must(client.CreateSession("acme", "s", true));
  auto stub = pb::SessionStore::NewStub(CreateStoreChannel(server.target()));
  // Sends `chunks` as PutPart's stream, the first announcing `total` bytes of part "p".
  const auto put = [&](int64_t total, std::vector<std::string> chunks) {
    grpc::ClientContext context;
    pb::PutPartResponse response;
    auto writer = stub->PutPart(&context, &response);
    for (size_t i = 0; i < chunks.size(); ++i) {
      pb::PutPartRequest chunk;
      if (i == 0) {
        chunk.set_tenant("acme");
        chunk.set_session_id("s");
        chunk.set_part("p");
        chunk.set_kind(pb::PART_KIND_BLOB);
        chunk.set_total_bytes(total);
      }
      chunk.set_payload(chunks[i]);
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  };
  const grpc::Status longer = put(4, {"abc", "de"});
  EXPECT_EQ(longer.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << longer.error_message();
  EXPECT_NE(longer.error_message().find("more than the 4 bytes"), std::string::npos) << longer.error_message();
  const grpc::Status shorter = put(6, {"abc", "de"});
  EXPECT_EQ(shorter.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << shorter.error_message();
  EXPECT_NE(shorter.error_message().find("5 of the 6 bytes"), std::string::npos) << shorter.error_message();
  EXPECT_EQ(put(-1, {""}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const grpc::Status too_big = put(kMaxPartBytes + 1, {"a"});
  EXPECT_EQ(too_big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << too_big.error_message();
  EXPECT_NE(too_big.error_message().find("max_part_bytes"), std::string::npos) << too_big.error_message();
  EXPECT_EQ(put(0, {}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);  // no chunk at all
  EXPECT_CODE(client.GetPart("acme", "s", "p"), kNotFound);

  EXPECT_TRUE(put(5, {"abc", "de"}).ok());
  EXPECT_EQ(Must(client.GetPart("acme", "s", "p")).payload, "abcde");
}

}  // namespace
}  // namespace deltaserve::services
