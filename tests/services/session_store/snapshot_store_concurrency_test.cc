// SnapshotStore under concurrent puts, gets, copies and deletes from several threads, with a
// memory limit small enough that parts keep moving between memory and disk.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "services/session_store/snapshot_store.h"
#include "tests/services/session_store/store_test_util.h"

namespace deltaserve::services {
namespace {

using testing::FakeClock;
using testing::Must;
using testing::TempDir;

constexpr int kThreads = 8;
constexpr int kRounds = 60;
constexpr int kPartsPerSession = 4;

// A payload that names its writer and round, so a reader can check it is whole and unmixed.
std::string Payload(int thread, int part, int round) {
  const std::string tag = absl::StrCat("t", thread, "-p", part, "-r", round, ";");
  std::string out;
  while (out.size() < 300 + static_cast<size_t>(part) * 50) out += tag;
  return out;
}

bool IsWholePayload(const std::string& payload, int thread, int part) {
  const std::string prefix = absl::StrCat("t", thread, "-p", part, "-r");
  if (payload.rfind(prefix, 0) != 0) return false;
  const std::string tag = payload.substr(0, payload.find(';') + 1);
  for (size_t i = 0; i + tag.size() <= payload.size(); i += tag.size()) {
    if (payload.compare(i, tag.size(), tag) != 0) return false;
  }
  return true;
}

class SnapshotStoreConcurrencyTest : public ::testing::TestWithParam<bool> {};

INSTANTIATE_TEST_SUITE_P(Tiers, SnapshotStoreConcurrencyTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& tier) {
                           return tier.param ? "Disk" : "MemoryOnly";
                         });

TEST_P(SnapshotStoreConcurrencyTest, ParallelPutsAndGetsStayConsistent) {
  TempDir dir;
  FakeClock clock;
  SnapshotStoreOptions options;
  if (GetParam()) options.data_dir = dir.path() + "/store";
  // Disk: a few parts fit in memory. Memory only: everything fits (no session is evicted).
  options.memory_limit_bytes = GetParam() ? 3000 : 1 << 20;
  options.max_part_bytes = 2000;
  options.clock = &clock;
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  Must(store->CreateSession("acme", "shared", true));
  for (int part = 0; part < kPartsPerSession; ++part) {
    Must(store->PutPart("acme", "shared", absl::StrCat("p", part), PartKind::kBlob,
                        Payload(0, part, 0)));
  }

  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 1; t <= kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string own = absl::StrCat("own-", t);
      if (!store->CreateSession("acme", own, true).ok()) ++failures;
      for (int round = 0; round < kRounds; ++round) {
        const int part = round % kPartsPerSession;
        const std::string name = absl::StrCat("p", part);
        if (!store->PutPart("acme", own, name, PartKind::kBlob, Payload(t, part, round)).ok()) {
          ++failures;
        }
        absl::StatusOr<Part> mine = store->GetPart("acme", own, name);
        if (!mine.ok() || mine->payload != Payload(t, part, round)) ++failures;
        // Everyone reads the shared session; one thread at a time rewrites one of its parts.
        const int shared_part = (round + t) % kPartsPerSession;
        absl::StatusOr<Part> shared =
            store->GetPart("acme", "shared", absl::StrCat("p", shared_part));
        if (!shared.ok()) {
          ++failures;
        } else {
          bool whole = false;
          for (int writer = 0; writer <= kThreads && !whole; ++writer) {
            whole = IsWholePayload(shared->payload, writer, shared_part);
          }
          if (!whole) ++failures;
        }
        if (round % 10 == t % 10) {
          if (!store
                   ->PutPart("acme", "shared", absl::StrCat("p", shared_part), PartKind::kBlob,
                             Payload(t, shared_part, round))
                   .ok()) {
            ++failures;
          }
        }
        if (round % 15 == 0) {
          const std::string fork = absl::StrCat(own, "-fork-", round);
          if (!store->CopySession("acme", own, fork).ok()) ++failures;
          if (!store->StatSession("acme", fork).ok()) ++failures;
          if (!store->DeleteSession("acme", fork).ok()) ++failures;
        }
        if (!store->ListSessions("acme", 3, "").ok()) ++failures;
        if (store->GetPart("globex", own, name).status().code() !=
            absl::StatusCode::kPermissionDenied) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);

  // Each own session holds its last round per part.
  for (int t = 1; t <= kThreads; ++t) {
    for (int part = 0; part < kPartsPerSession; ++part) {
      const int last_round = kRounds - kPartsPerSession + part;
      EXPECT_EQ(
          Must(store->GetPart("acme", absl::StrCat("own-", t), absl::StrCat("p", part))).payload,
          Payload(t, part, last_round));
    }
  }
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.sessions, kThreads + 1);
  EXPECT_LE(stats.memory_bytes, options.memory_limit_bytes);
  EXPECT_EQ(stats.checksum_failures_total, 0);
  if (GetParam()) {
    EXPECT_EQ(stats.disk_parts, (kThreads + 1) * kPartsPerSession);
    EXPECT_GT(stats.memory_evictions_total, 0);
    EXPECT_GT(stats.disk_hits_total, 0);
    // The disk holds what the index says, across a restart.
    store.reset();
    store = Must(SnapshotStore::Open(options));
    EXPECT_EQ(store->Stats().disk_parts, (kThreads + 1) * kPartsPerSession);
    EXPECT_EQ(store->Stats().quarantined_files_total, 0);
    for (int t = 1; t <= kThreads; ++t) {
      EXPECT_EQ(Must(store->GetPart("acme", absl::StrCat("own-", t), "p0")).payload,
                Payload(t, 0, kRounds - kPartsPerSession));
    }
  }
}

// Many threads create, copy onto and delete the same few ids: every call gets a clean answer.
// ABORTED is one: a call whose session was removed and created again under it on every one of its
// attempts is told to retry (seen once in CI on 2 cores).
TEST(SnapshotStoreRaceTest, CreateCopyAndDeleteOfTheSameIds) {
  TempDir dir;
  FakeClock clock;
  SnapshotStoreOptions options;
  options.data_dir = dir.path() + "/store";
  options.clock = &clock;
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  Must(store->CreateSession("acme", "base", true));
  Must(store->PutPart("acme", "base", "manifest", PartKind::kBlob, "base"));
  std::atomic<int> unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string tenant = t % 4 == 3 ? "globex" : "acme";
      for (int round = 0; round < 40; ++round) {
        const std::string id = absl::StrCat("id-", round % 3);
        absl::Status status;
        switch ((round + t) % 4) {
          case 0:
            status = store->CreateSession(tenant, id, false).status();
            break;
          case 1:
            status = store->CopySession(tenant, "base", id).status();
            break;
          case 2:
            status = store->DeleteSession(tenant, id);
            break;
          default:
            status = store->PutPart(tenant, id, "manifest", PartKind::kBlob, "x").status();
        }
        switch (status.code()) {
          case absl::StatusCode::kOk:
          case absl::StatusCode::kNotFound:
          case absl::StatusCode::kAlreadyExists:
          case absl::StatusCode::kPermissionDenied:
          case absl::StatusCode::kAborted:
            break;
          default:
            ++unexpected;
            ADD_FAILURE() << status;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(unexpected.load(), 0);
  // Whatever survived is consistent on disk.
  const int64_t sessions = store->Stats().sessions;
  store.reset();
  store = Must(SnapshotStore::Open(options));
  EXPECT_EQ(store->Stats().sessions, sessions);
  EXPECT_EQ(store->Stats().quarantined_files_total, 0);
}

}  // namespace
}  // namespace deltaserve::services
