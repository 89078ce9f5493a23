// SnapshotStore with a disk tier: LRU eviction to disk and back, restart, damaged and stray
// files, the disk byte limit and the directory lock.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "services/session_store/snapshot_store.h"
#include "tests/services/session_store/store_test_util.h"

namespace deltaserve::services {
namespace {

using testing::BuildStateSnapshot;
using testing::FakeClock;
using testing::FlipByte;
using testing::ListFiles;
using testing::Must;
using testing::TempDir;
using testing::TestBytes;
using testing::WriteFileOrDie;

class SnapshotStoreDiskTest : public ::testing::Test {
 protected:
  SnapshotStoreOptions Options() const {
    SnapshotStoreOptions options;
    options.data_dir = DataDir();
    options.memory_limit_bytes = 1 << 20;
    options.max_part_bytes = 1 << 20;
    options.clock = &clock_;
    return options;
  }
  std::string DataDir() const { return dir_.path() + "/store"; }
  std::string PartPath(const std::string& session, const std::string& part) const {
    return DataDir() + "/sessions/" + session + "/" + part + ".part";
  }
  std::vector<std::string> QuarantinedFiles() const { return ListFiles(DataDir() + "/quarantine"); }

  TempDir dir_;
  FakeClock clock_;
};

TEST_F(SnapshotStoreDiskTest, LeastRecentlyUsedPartsLeaveMemoryAndComeBackFromDisk) {
  SnapshotStoreOptions options = Options();
  options.memory_limit_bytes = 1000;
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  Must(store->CreateSession("acme", "a", true));
  Must(store->CreateSession("acme", "b", true));
  Must(store->PutPart("acme", "a", "p1", PartKind::kBlob, TestBytes(400, 1)));
  Must(store->PutPart("acme", "a", "p2", PartKind::kBlob, TestBytes(400, 2)));
  Must(store->PutPart("acme", "b", "p1", PartKind::kBlob, TestBytes(400, 3)));

  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.memory_bytes, 800);
  EXPECT_EQ(stats.memory_parts, 2);
  EXPECT_EQ(stats.disk_parts, 3);
  EXPECT_EQ(stats.disk_bytes, 1200);
  EXPECT_EQ(stats.memory_evictions_total, 1);
  // Session a was least recently used, and p1 its least recently used part.
  SessionInfo a = Must(store->StatSession("acme", "a"));
  EXPECT_EQ(a.parts[0].tier, Tier::kDisk);
  EXPECT_EQ(a.parts[1].tier, Tier::kMemory);

  const Part p1 = Must(store->GetPart("acme", "a", "p1"));
  EXPECT_EQ(p1.payload, TestBytes(400, 1));
  EXPECT_EQ(p1.info.tier, Tier::kDisk);  // where it was found
  stats = store->Stats();
  EXPECT_EQ(stats.memory_misses_total, 1);
  EXPECT_EQ(stats.disk_hits_total, 1);
  EXPECT_EQ(stats.memory_evictions_total, 2);  // promoting p1 pushed out the oldest
  EXPECT_EQ(Must(store->StatSession("acme", "a")).parts[0].tier, Tier::kMemory);
  EXPECT_LE(stats.memory_bytes, 1000);
  // Every part still reads back.
  EXPECT_EQ(Must(store->GetPart("acme", "a", "p2")).payload, TestBytes(400, 2));
  EXPECT_EQ(Must(store->GetPart("acme", "b", "p1")).payload, TestBytes(400, 3));
  EXPECT_EQ(Must(store->GetPart("acme", "a", "p1")).payload, TestBytes(400, 1));
}

TEST_F(SnapshotStoreDiskTest, PartLargerThanMemoryLivesOnDiskOnly) {
  SnapshotStoreOptions options = Options();
  options.memory_limit_bytes = 100;
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  Must(store->CreateSession("acme", "s", true));
  const PartInfo info =
      Must(store->PutPart("acme", "s", "big", PartKind::kBlob, TestBytes(5000, 9)));
  EXPECT_EQ(info.tier, Tier::kDisk);
  EXPECT_EQ(Must(store->GetPart("acme", "s", "big")).payload, TestBytes(5000, 9));
  EXPECT_EQ(store->Stats().memory_bytes, 0);
}

TEST_F(SnapshotStoreDiskTest, RestartSeesEveryFinishedSessionAndPart) {
  const std::string state_a = BuildStateSnapshot(77, 0, 14, {1, 2, 3}, TestBytes(3000, 1));
  const std::string state_b = BuildStateSnapshot(77, 14, 27, {1, 2, 3}, TestBytes(2000, 2));
  int64_t created_ms = 0;
  {
    std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(Options()));
    created_ms = Must(store->CreateSession("acme", "conv-1", true)).created_unix_ms;
    Must(store->PutPart("acme", "conv-1", "layers-0-13", PartKind::kState, state_a));
    Must(store->PutPart("acme", "conv-1", "layers-14-26", PartKind::kState, state_b));
    Must(store->PutPart("acme", "conv-1", "manifest", PartKind::kBlob, "first"));
    clock_.AdvanceMs(1000);
    Must(store->PutPart("acme", "conv-1", "manifest", PartKind::kBlob, "second"));
    Must(store->CreateSession("globex", "conv-2", true));
    Must(store->PutPart("globex", "conv-2", "manifest", PartKind::kBlob, "globex"));
    Must(store->CopySession("acme", "conv-1", "conv-1-fork"));
    Must(store->CreateSession("acme", "doomed", true));
    Must(store->PutPart("acme", "doomed", "manifest", PartKind::kBlob, "x"));
    Must(store->DeleteSession("acme", "doomed"));
    Must(store->CreateSession("acme", "empty", true));
  }
  clock_.AdvanceMs(1000);
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(Options()));
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.sessions, 4);
  EXPECT_EQ(stats.disk_parts, 7);
  EXPECT_EQ(stats.memory_parts, 0);  // loaded lazily
  EXPECT_EQ(stats.quarantined_files_total, 0);

  const SessionPage acme = Must(store->ListSessions("acme", 0, ""));
  ASSERT_EQ(acme.sessions.size(), 3u);
  EXPECT_EQ(acme.sessions[0].session_id, "conv-1");
  EXPECT_EQ(acme.sessions[1].session_id, "conv-1-fork");
  EXPECT_EQ(acme.sessions[2].session_id, "empty");
  const SessionInfo conv1 = Must(store->StatSession("acme", "conv-1"));
  EXPECT_EQ(conv1.created_unix_ms, created_ms);
  EXPECT_EQ(conv1.last_used_unix_ms, created_ms + 1000);  // its last write
  ASSERT_EQ(conv1.parts.size(), 3u);
  EXPECT_EQ(conv1.parts[0].name, "layers-0-13");
  EXPECT_EQ(conv1.parts[0].kind, PartKind::kState);
  EXPECT_EQ(conv1.parts[0].num_tokens, 3);
  EXPECT_EQ(conv1.parts[0].model_fingerprint, 77u);
  EXPECT_EQ(conv1.parts[1].layer_begin, 14);
  EXPECT_EQ(conv1.parts[0].tier, Tier::kDisk);
  EXPECT_EQ(Must(store->GetPart("acme", "conv-1", "layers-0-13")).payload, state_a);
  EXPECT_EQ(Must(store->GetPart("acme", "conv-1", "layers-14-26")).payload, state_b);
  EXPECT_EQ(Must(store->GetPart("acme", "conv-1", "manifest")).payload, "second");
  EXPECT_EQ(Must(store->GetPart("acme", "conv-1-fork", "layers-0-13")).payload, state_a);
  EXPECT_EQ(Must(store->GetPart("acme", "conv-1-fork", "manifest")).payload, "second");
  EXPECT_EQ(Must(store->GetPart("globex", "conv-2", "manifest")).payload, "globex");
  EXPECT_CODE(store->StatSession("acme", "doomed"), kNotFound);
  EXPECT_TRUE(Must(store->StatSession("acme", "empty")).parts.empty());
  // Ownership survives too.
  EXPECT_CODE(store->GetPart("acme", "conv-2", "manifest"), kPermissionDenied);
  EXPECT_CODE(store->CreateSession("globex", "conv-1", false), kPermissionDenied);
  // And the store goes on working on the same directory.
  Must(store->PutPart("acme", "conv-1", "manifest", PartKind::kBlob, "third"));
  store.reset();
  store = Must(SnapshotStore::Open(Options()));
  EXPECT_EQ(Must(store->GetPart("acme", "conv-1", "manifest")).payload, "third");
}

TEST_F(SnapshotStoreDiskTest, TtlCountsFromTheLastWriteAcrossARestart) {
  SnapshotStoreOptions options = Options();
  options.ttl_seconds = 100;
  {
    std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
    Must(store->CreateSession("acme", "s", true));
    Must(store->CreateSession("acme", "old", true));
    clock_.AdvanceMs(50'000);
    Must(store->PutPart("acme", "s", "manifest", PartKind::kBlob, "m"));
  }
  clock_.AdvanceMs(70'000);  // 120 s after creation, 70 s after the write
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  EXPECT_EQ(Must(store->GetPart("acme", "s", "manifest")).payload, "m");
  EXPECT_CODE(store->StatSession("acme", "old"), kNotFound);
  EXPECT_FALSE(std::filesystem::exists(DataDir() + "/sessions/old"));
  EXPECT_EQ(store->Stats().expirations_total, 1);  // swept on open
}

TEST_F(SnapshotStoreDiskTest, FlippedPayloadByteIsDataLossAndTheStoreKeepsServing) {
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(Options()));
  Must(store->CreateSession("acme", "s", true));
  const std::string state = BuildStateSnapshot(5, 0, 2, {9, 9}, TestBytes(1000, 4));
  Must(store->PutPart("acme", "s", "layers-0-1", PartKind::kState, state));
  Must(store->PutPart("acme", "s", "manifest", PartKind::kBlob, "m"));
  store.reset();  // so the next read comes from disk
  FlipByte(PartPath("s", "layers-0-1"), -10);

  store = Must(SnapshotStore::Open(Options()));
  const absl::StatusOr<Part> damaged = store->GetPart("acme", "s", "layers-0-1");
  EXPECT_CODE(damaged, kDataLoss);
  EXPECT_NE(damaged.status().message().find("layers-0-1"), std::string::npos) << damaged.status();
  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.checksum_failures_total, 1);
  EXPECT_EQ(stats.disk_misses_total, 1);
  EXPECT_EQ(stats.quarantined_files_total, 1);
  EXPECT_EQ(stats.disk_parts, 1);
  EXPECT_EQ(QuarantinedFiles().size(), 1u);
  EXPECT_FALSE(std::filesystem::exists(PartPath("s", "layers-0-1")));

  // The damaged part is gone; the rest of the session and the store work on.
  EXPECT_CODE(store->GetPart("acme", "s", "layers-0-1"), kNotFound);
  EXPECT_EQ(Must(store->GetPart("acme", "s", "manifest")).payload, "m");
  Must(store->PutPart("acme", "s", "layers-0-1", PartKind::kState, state));
  EXPECT_EQ(Must(store->GetPart("acme", "s", "layers-0-1")).payload, state);
  store.reset();
  store = Must(SnapshotStore::Open(Options()));
  EXPECT_EQ(Must(store->GetPart("acme", "s", "layers-0-1")).payload, state);
}

TEST_F(SnapshotStoreDiskTest, DamageWhileOpenIsDataLossToo) {
  SnapshotStoreOptions options = Options();
  options.memory_limit_bytes = 10;  // every read comes from disk
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  Must(store->CreateSession("acme", "s", true));
  Must(store->PutPart("acme", "s", "header-hit", PartKind::kBlob, TestBytes(100, 1)));
  Must(store->PutPart("acme", "s", "payload-hit", PartKind::kBlob, TestBytes(100, 2)));
  Must(store->PutPart("acme", "s", "truncated", PartKind::kBlob, TestBytes(100, 3)));
  Must(store->PutPart("acme", "s", "removed", PartKind::kBlob, TestBytes(100, 4)));
  FlipByte(PartPath("s", "header-hit"), 30);
  FlipByte(PartPath("s", "payload-hit"), -1);
  const std::string truncated = testing::ReadFileOrDie(PartPath("s", "truncated"));
  WriteFileOrDie(PartPath("s", "truncated"), truncated.substr(0, truncated.size() - 7));
  std::filesystem::remove(PartPath("s", "removed"));
  for (const char* part : {"header-hit", "payload-hit", "truncated", "removed"}) {
    SCOPED_TRACE(part);
    EXPECT_CODE(store->GetPart("acme", "s", part), kDataLoss);
    EXPECT_CODE(store->GetPart("acme", "s", part), kNotFound);
  }
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.checksum_failures_total, 4);
  EXPECT_EQ(stats.quarantined_files_total, 3);  // the removed one had nothing to move
  EXPECT_EQ(stats.disk_parts, 0);
  EXPECT_EQ(stats.disk_bytes, 0);
}

TEST_F(SnapshotStoreDiskTest, DamagedOrStrayFilesDoNotStopOpen) {
  {
    std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(Options()));
    Must(store->CreateSession("acme", "good", true));
    Must(store->PutPart("acme", "good", "manifest", PartKind::kBlob, "g"));
    Must(store->PutPart("acme", "good", "layers-0-1", PartKind::kBlob, TestBytes(500, 1)));
    Must(store->CreateSession("acme", "hurt", true));
    Must(store->PutPart("acme", "hurt", "manifest", PartKind::kBlob, "h"));
    Must(store->PutPart("acme", "hurt", "layers-0-1", PartKind::kBlob, TestBytes(500, 2)));
    Must(store->PutPart("acme", "hurt", "layers-2-3", PartKind::kBlob, TestBytes(500, 3)));
    Must(store->CreateSession("acme", "nometa", true));
    Must(store->PutPart("acme", "nometa", "manifest", PartKind::kBlob, "n"));
  }
  const std::string sessions = DataDir() + "/sessions";
  // A truncated part, a part with a garbage header, a part claiming another session's place.
  const std::string whole = testing::ReadFileOrDie(PartPath("hurt", "layers-0-1"));
  WriteFileOrDie(PartPath("hurt", "layers-0-1"), whole.substr(0, 100));
  WriteFileOrDie(PartPath("hurt", "layers-2-3"), "garbage, not a part file");
  std::filesystem::copy_file(PartPath("good", "manifest"), PartPath("hurt", "stolen"));
  // Unknown files, an unfinished write, a stray file and directory, damaged metadata.
  WriteFileOrDie(sessions + "/hurt/notes.txt", "?");
  WriteFileOrDie(sessions + "/hurt/.tmp-manifest.123", "half a write");
  WriteFileOrDie(sessions + "/stray-file", "?");
  std::filesystem::create_directory(sessions + "/.hidden");
  std::filesystem::create_directory(sessions + "/unfinished");
  WriteFileOrDie(sessions + "/unfinished/.tmp-meta.1", "x");
  WriteFileOrDie(sessions + "/nometa/session.meta", "DSSESS01 but garbage after it");
  WriteFileOrDie(DataDir() + "/trash/leftover", "x");

  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(Options()));
  const SessionPage page = Must(store->ListSessions("acme", 0, ""));
  ASSERT_EQ(page.sessions.size(), 2u);
  EXPECT_EQ(page.sessions[0].session_id, "good");
  EXPECT_EQ(page.sessions[1].session_id, "hurt");
  EXPECT_EQ(page.sessions[0].parts.size(), 2u);
  ASSERT_EQ(page.sessions[1].parts.size(), 1u);
  EXPECT_EQ(page.sessions[1].parts[0].name, "manifest");
  EXPECT_EQ(Must(store->GetPart("acme", "good", "layers-0-1")).payload, TestBytes(500, 1));
  EXPECT_EQ(Must(store->GetPart("acme", "hurt", "manifest")).payload, "h");
  EXPECT_CODE(store->StatSession("acme", "nometa"), kNotFound);
  // 3 bad parts, notes.txt, stray-file, .hidden, nometa's directory.
  EXPECT_EQ(store->Stats().quarantined_files_total, 7);
  EXPECT_FALSE(std::filesystem::exists(sessions + "/hurt/.tmp-manifest.123"));
  EXPECT_FALSE(std::filesystem::exists(sessions + "/unfinished"));
  EXPECT_FALSE(std::filesystem::exists(DataDir() + "/trash/leftover"));
  // The ids of damaged sessions can be used again.
  Must(store->CreateSession("acme", "nometa", true));
  Must(store->PutPart("acme", "nometa", "manifest", PartKind::kBlob, "again"));
  EXPECT_EQ(Must(store->GetPart("acme", "nometa", "manifest")).payload, "again");
}

TEST_F(SnapshotStoreDiskTest, MaxDiskBytesIsResourceExhausted) {
  SnapshotStoreOptions options = Options();
  options.max_disk_bytes = 1000;
  options.max_part_bytes = 1000;
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  Must(store->CreateSession("acme", "s", true));
  Must(store->PutPart("acme", "s", "a", PartKind::kBlob, std::string(600, 'a')));
  EXPECT_CODE(store->PutPart("acme", "s", "b", PartKind::kBlob, std::string(600, 'b')),
              kResourceExhausted);
  Must(store->PutPart("acme", "s", "a", PartKind::kBlob, std::string(1000, 'a')));  // replaces
  EXPECT_CODE(store->CopySession("acme", "s", "fork"), kResourceExhausted);
  EXPECT_CODE(store->StatSession("acme", "fork"), kNotFound);
  Must(store->PutPart("acme", "s", "a", PartKind::kBlob, std::string(100, 'a')));
  Must(store->CopySession("acme", "s", "fork"));
  EXPECT_EQ(store->Stats().disk_bytes, 200);
}

TEST_F(SnapshotStoreDiskTest, SecondStoreOnTheSameDirectoryIsRefused) {
  std::unique_ptr<SnapshotStore> first = Must(SnapshotStore::Open(Options()));
  EXPECT_CODE(SnapshotStore::Open(Options()), kFailedPrecondition);
  first.reset();
  Must(SnapshotStore::Open(Options()));
}

TEST_F(SnapshotStoreDiskTest, NoTemporaryFilesAreLeftBehind) {
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(Options()));
  Must(store->CreateSession("acme", "s", true));
  for (int i = 0; i < 5; ++i) {
    Must(store->PutPart("acme", "s", "manifest", PartKind::kBlob, TestBytes(100, i)));
  }
  Must(store->CopySession("acme", "s", "t"));
  Must(store->DeleteSession("acme", "s"));
  for (const std::string& file : ListFiles(DataDir())) {
    EXPECT_EQ(file.find(".tmp-"), std::string::npos) << file;
  }
  EXPECT_EQ(ListFiles(DataDir() + "/sessions").size(), 2u);  // t's metadata and manifest
  EXPECT_TRUE(ListFiles(DataDir() + "/staging").empty());
  EXPECT_TRUE(ListFiles(DataDir() + "/trash").empty());
}

}  // namespace
}  // namespace deltaserve::services
