// NCCL links between two GPUs of this host (one process, a thread per side): bytes arrive as
// sent, both ways; a transfer the peer never matches times out and breaks the link instead of
// hanging; an abandoned send, finished or not, breaks it at once; a join the peer refuses ends
// when told to. Skipped with the reason where this build has no NCCL or the host fewer GPUs.
#include "services/transport/nccl_link.h"

#include <atomic>
#include <cstdint>
#include <future>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

#if DELTASERVE_HAVE_NCCL
#include <cuda_runtime.h>
#endif

namespace deltaserve::services {
namespace {

TEST(NcclLinkTest, AnIdOfTheWrongSizeIsRefused) {
  const absl::StatusOr<std::unique_ptr<NcclLink>> link = NcclLink::Join("short", 0, {.capacity_bytes = 64});
#if DELTASERVE_HAVE_NCCL
  EXPECT_EQ(link.status().code(), absl::StatusCode::kInvalidArgument) << link.status();
#else
  EXPECT_EQ(link.status().code(), absl::StatusCode::kUnimplemented) << link.status();
#endif
}

#if DELTASERVE_HAVE_NCCL

class NcclLinkPairTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 2) {
      GTEST_SKIP() << "an NCCL link needs two GPUs; this host has " << gpus;
    }
    absl::StatusOr<std::string> id = NcclLink::NewId();
    ASSERT_TRUE(id.ok()) << id.status();
    // Each side joins in its own thread: the join returns once both have.
    auto join = [&](int rank) {
      return NcclLink::Join(*id, rank, {.device = rank, .capacity_bytes = kCapacity, .timeout = kTimeout});
    };
    std::future<absl::StatusOr<std::unique_ptr<NcclLink>>> second = std::async(std::launch::async, join, 1);
    absl::StatusOr<std::unique_ptr<NcclLink>> first = join(0);
    absl::StatusOr<std::unique_ptr<NcclLink>> other = second.get();
    ASSERT_TRUE(first.ok()) << first.status();
    ASSERT_TRUE(other.ok()) << other.status();
    links_[0] = std::move(*first);
    links_[1] = std::move(*other);
  }

  // Writes `values` into side `rank`'s buffer, or reads its first values.size() floats back.
  void Fill(int rank, const std::vector<float>& values) {
    ASSERT_EQ(cudaSetDevice(rank), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(links_[rank]->buffer(), values.data(), values.size() * sizeof(float),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  std::vector<float> Read(int rank, size_t count) {
    std::vector<float> values(count);
    EXPECT_EQ(cudaSetDevice(rank), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(values.data(), links_[rank]->buffer(), count * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return values;
  }

  static constexpr size_t kCapacity = size_t{1} << 22;
  static constexpr std::chrono::milliseconds kTimeout{20000};
  std::unique_ptr<NcclLink> links_[2];
};

std::vector<float> Pattern(size_t count, float offset) {
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = offset + static_cast<float>(i % 9973) * 0.5f;
  return values;
}

TEST_F(NcclLinkPairTest, BytesArriveAsSentBothWays) {
  for (const auto& [from, count] : {std::pair{0, size_t{3}}, std::pair{1, kCapacity / sizeof(float)},
                                    std::pair{0, size_t{230'400}}}) {
    const int to = 1 - from;
    const std::vector<float> sent = Pattern(count, static_cast<float>(from * 1000 + count % 7));
    Fill(from, sent);
    ASSERT_TRUE(links_[from]->StartSend(count * sizeof(float)).ok());
    std::future<absl::Status> received =
        std::async(std::launch::async, [&] { return links_[to]->Receive(count * sizeof(float)); });
    const absl::Status sent_status = links_[from]->FinishSend();
    const absl::Status received_status = received.get();
    ASSERT_TRUE(sent_status.ok()) << sent_status;
    ASSERT_TRUE(received_status.ok()) << received_status;
    EXPECT_EQ(Read(to, count), sent) << count << " values from side " << from;
  }
  EXPECT_FALSE(links_[0]->broken());
  EXPECT_FALSE(links_[1]->broken());
}

// A send whose announcing call failed is abandoned: even finished (its bytes may sit unreceived
// in NCCL's buffers) it breaks the link, at once.
TEST_F(NcclLinkPairTest, AnAbandonedSendBreaksTheLinkEvenOnceFinished) {
  const std::vector<float> sent = Pattern(64, 3.0f);
  Fill(0, sent);
  std::vector<float> read(sent.size());
  ASSERT_TRUE(links_[0]->ReadBuffer(read.data(), read.size() * sizeof(float)).ok());
  EXPECT_EQ(read, sent);
  ASSERT_TRUE(links_[0]->StartSend(sent.size() * sizeof(float)).ok());
  ASSERT_TRUE(links_[1]->Receive(sent.size() * sizeof(float)).ok());
  const auto start = std::chrono::steady_clock::now();
  links_[0]->AbandonSend();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_TRUE(links_[0]->broken());
  EXPECT_EQ(links_[0]->StartSend(4).code(), absl::StatusCode::kUnavailable);
}

TEST_F(NcclLinkPairTest, TransfersBeyondTheBufferAreRefusedAndTheLinkStaysUp) {
  const absl::Status status = links_[0]->StartSend(kCapacity + 4);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(links_[1]->Receive(0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(links_[0]->broken());
  EXPECT_FALSE(links_[1]->broken());
  // And it still carries a transfer.
  const std::vector<float> sent = Pattern(1000, 7.0f);
  Fill(0, sent);
  ASSERT_TRUE(links_[0]->StartSend(sent.size() * sizeof(float)).ok());
  std::future<absl::Status> received =
      std::async(std::launch::async, [&] { return links_[1]->Receive(sent.size() * sizeof(float)); });
  ASSERT_TRUE(links_[0]->FinishSend().ok());
  ASSERT_TRUE(received.get().ok());
  EXPECT_EQ(Read(1, sent.size()), sent);
}

TEST(NcclLinkTimeoutTest, AReceiveNobodyMatchesTimesOutAndBreaksTheLink) {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 2) GTEST_SKIP() << "needs two GPUs; this host has " << gpus;
  absl::StatusOr<std::string> id = NcclLink::NewId();
  ASSERT_TRUE(id.ok()) << id.status();
  auto join = [&](int rank) {
    const std::chrono::milliseconds timeout(rank == 1 ? 800 : 20000);
    return NcclLink::Join(*id, rank, {.device = rank, .capacity_bytes = 1024, .timeout = timeout});
  };
  std::future<absl::StatusOr<std::unique_ptr<NcclLink>>> second = std::async(std::launch::async, join, 1);
  absl::StatusOr<std::unique_ptr<NcclLink>> first = join(0);
  absl::StatusOr<std::unique_ptr<NcclLink>> other = second.get();
  ASSERT_TRUE(first.ok() && other.ok()) << first.status() << " / " << other.status();

  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = (*other)->Receive(256);
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_TRUE((*other)->broken());
  EXPECT_EQ((*other)->Receive(256).code(), absl::StatusCode::kUnavailable);

  // The other side's send is never matched: abandoning it (or failing to queue it, the peer gone)
  // breaks that side too, at once.
  const auto abandoned = std::chrono::steady_clock::now();
  if ((*first)->StartSend(256).ok()) (*first)->AbandonSend();
  EXPECT_TRUE((*first)->broken());
  EXPECT_LT(std::chrono::steady_clock::now() - abandoned, std::chrono::seconds(10));
}

TEST(NcclLinkTimeoutTest, AJoinThePeerRefusesEndsWhenItGivesUp) {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 1) GTEST_SKIP() << "needs a GPU";
  absl::StatusOr<std::string> id = NcclLink::NewId();
  ASSERT_TRUE(id.ok()) << id.status();
  std::atomic<bool> give_up{false};
  std::future<absl::StatusOr<std::unique_ptr<NcclLink>>> joining = std::async(std::launch::async, [&] {
    return NcclLink::Join(*id, 0, {.device = 0, .capacity_bytes = 1024, .timeout = std::chrono::seconds(60),
                                   .give_up = [&] { return give_up.load(); }});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  give_up = true;
  ASSERT_EQ(joining.wait_for(std::chrono::seconds(10)), std::future_status::ready) << "the join did not give up";
  EXPECT_EQ(joining.get().status().code(), absl::StatusCode::kCancelled);
}

#endif  // DELTASERVE_HAVE_NCCL

}  // namespace
}  // namespace deltaserve::services
