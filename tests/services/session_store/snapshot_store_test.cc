// SnapshotStore behaviour common to memory-only and disk-backed stores: round trips, tenancy,
// ids, envelopes, limits, TTL, listing, delete and copy.
#include "services/session_store/snapshot_store.h"

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tests/services/session_store/store_test_util.h"

namespace deltaserve::services {
namespace {

using testing::BuildStateSnapshot;
using testing::FakeClock;
using testing::Must;
using testing::TempDir;
using testing::TestBytes;

// Runs every test over a memory-only store and over a store with a disk tier.
class SnapshotStoreTest : public ::testing::TestWithParam<bool> {
 protected:
  SnapshotStoreOptions Options() const {
    SnapshotStoreOptions options;
    if (GetParam()) options.data_dir = dir_.path() + "/store";
    options.memory_limit_bytes = 1 << 20;
    options.max_part_bytes = 64 << 10;
    options.clock = &clock_;
    return options;
  }
  SnapshotStore& Open(const SnapshotStoreOptions& options) {
    store_.reset();
    store_ = Must(SnapshotStore::Open(options));
    return *store_;
  }
  SnapshotStore& Open() { return Open(Options()); }

  TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<SnapshotStore> store_;
};

INSTANTIATE_TEST_SUITE_P(Tiers, SnapshotStoreTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& tier) {
                           return tier.param ? "Disk" : "MemoryOnly";
                         });

TEST_P(SnapshotStoreTest, RoundTripsStateAndBlobParts) {
  SnapshotStore& store = Open();
  const SessionInfo created = Must(store.CreateSession("acme", "conv-1", true));
  EXPECT_EQ(created.tenant, "acme");
  EXPECT_EQ(created.session_id, "conv-1");
  EXPECT_EQ(created.created_unix_ms, clock_.NowUnixMs());
  EXPECT_TRUE(created.parts.empty());

  const std::string state = BuildStateSnapshot(0xfeedf00d, 0, 14, {1, 2, 3, 4, 5}, "kda+mla");
  const std::string manifest = "{\"stages\":2}";
  const PartInfo put_state =
      Must(store.PutPart("acme", "conv-1", "layers-0-13", PartKind::kState, state));
  EXPECT_EQ(put_state.kind, PartKind::kState);
  EXPECT_EQ(put_state.bytes, static_cast<int64_t>(state.size()));
  EXPECT_EQ(put_state.num_tokens, 5);
  EXPECT_EQ(put_state.model_fingerprint, 0xfeedf00dULL);
  EXPECT_EQ(put_state.layer_begin, 0);
  EXPECT_EQ(put_state.layer_end, 14);
  Must(store.PutPart("acme", "conv-1", "manifest", PartKind::kBlob, manifest));

  const Part got_state = Must(store.GetPart("acme", "conv-1", "layers-0-13"));
  EXPECT_EQ(got_state.payload, state);
  EXPECT_EQ(got_state.info.num_tokens, 5);
  const Part got_manifest = Must(store.GetPart("acme", "conv-1", "manifest"));
  EXPECT_EQ(got_manifest.payload, manifest);
  EXPECT_EQ(got_manifest.info.kind, PartKind::kBlob);
  EXPECT_EQ(got_manifest.info.num_tokens, 0);

  const SessionInfo stat = Must(store.StatSession("acme", "conv-1"));
  ASSERT_EQ(stat.parts.size(), 2u);
  EXPECT_EQ(stat.parts[0].name, "layers-0-13");  // ordered by name
  EXPECT_EQ(stat.parts[1].name, "manifest");
  EXPECT_EQ(stat.parts[0].tier, Tier::kMemory);

  // Replacing a part keeps one copy with the new bytes.
  const std::string state2 = BuildStateSnapshot(0xfeedf00d, 0, 14, {1, 2, 3, 4, 5, 6, 7}, "x");
  Must(store.PutPart("acme", "conv-1", "layers-0-13", PartKind::kState, state2));
  EXPECT_EQ(Must(store.GetPart("acme", "conv-1", "layers-0-13")).payload, state2);
  EXPECT_EQ(Must(store.StatSession("acme", "conv-1")).parts[0].num_tokens, 7);
  const StoreStats stats = store.Stats();
  EXPECT_EQ(stats.sessions, 1);
  EXPECT_EQ(stats.memory_parts, 2);
  EXPECT_EQ(stats.memory_bytes, static_cast<int64_t>(state2.size() + manifest.size()));
  EXPECT_EQ(stats.disk_parts, GetParam() ? 2 : 0);
  EXPECT_EQ(stats.parts_written_total, 3);
  EXPECT_EQ(stats.memory_hits_total, 3);
}

// GetPartShared hands out the memory tier's own buffer: reading a part twice copies nothing,
// and a part read back from disk is the buffer that was promoted to memory.
TEST_P(SnapshotStoreTest, SharedReadsAreTheMemoryTiersBuffer) {
  SnapshotStore& store = Open();
  Must(store.CreateSession("acme", "s", true));
  const std::string bytes = TestBytes(10 << 10, 5);
  Must(store.PutPart("acme", "s", "blob", PartKind::kBlob, bytes));
  const SharedPart first = Must(store.GetPartShared("acme", "s", "blob"));
  const SharedPart second = Must(store.GetPartShared("acme", "s", "blob"));
  EXPECT_EQ(*first.payload, bytes);
  EXPECT_EQ(first.payload.get(), second.payload.get());
  EXPECT_EQ(first.info.bytes, static_cast<int64_t>(bytes.size()));
  if (!GetParam()) return;
  SnapshotStore& reopened = Open();  // the part is on disk only now
  const SharedPart from_disk = Must(reopened.GetPartShared("acme", "s", "blob"));
  EXPECT_EQ(*from_disk.payload, bytes);
  EXPECT_EQ(Must(reopened.GetPartShared("acme", "s", "blob")).payload.get(), from_disk.payload.get());
  EXPECT_EQ(Must(reopened.GetPart("acme", "s", "blob")).payload, bytes);
}

TEST_P(SnapshotStoreTest, EmptyBlobIsAPart) {
  SnapshotStore& store = Open();
  Must(store.CreateSession("acme", "s", true));
  Must(store.PutPart("acme", "s", "empty", PartKind::kBlob, ""));
  EXPECT_EQ(Must(store.GetPart("acme", "s", "empty")).payload, "");
}

TEST_P(SnapshotStoreTest, CreateReturnsExistingUnlessMustBeNew) {
  SnapshotStore& store = Open();
  Must(store.CreateSession("acme", "s1", true));
  Must(store.PutPart("acme", "s1", "manifest", PartKind::kBlob, "m"));
  clock_.AdvanceMs(5);
  EXPECT_CODE(store.CreateSession("acme", "s1", true), kAlreadyExists);
  const SessionInfo existing = Must(store.CreateSession("acme", "s1", false));
  EXPECT_EQ(existing.parts.size(), 1u);
  EXPECT_EQ(existing.created_unix_ms, clock_.NowUnixMs() - 5);
}

TEST_P(SnapshotStoreTest, UnknownSessionOrPartIsNotFound) {
  SnapshotStore& store = Open();
  EXPECT_CODE(store.GetPart("acme", "nope", "manifest"), kNotFound);
  EXPECT_CODE(store.PutPart("acme", "nope", "manifest", PartKind::kBlob, "x"), kNotFound);
  EXPECT_CODE(store.StatSession("acme", "nope"), kNotFound);
  EXPECT_CODE(store.DeleteSession("acme", "nope"), kNotFound);
  EXPECT_CODE(store.CopySession("acme", "nope", "other"), kNotFound);
  Must(store.CreateSession("acme", "s1", true));
  const absl::StatusOr<Part> missing = store.GetPart("acme", "s1", "layers-0-13");
  EXPECT_CODE(missing, kNotFound);
  EXPECT_NE(missing.status().message().find("layers-0-13"), std::string::npos);
  EXPECT_NE(missing.status().message().find("s1"), std::string::npos);
}

TEST_P(SnapshotStoreTest, AnotherTenantsSessionIsPermissionDeniedBothWays) {
  SnapshotStore& store = Open();
  Must(store.CreateSession("acme", "a-1", true));
  Must(store.PutPart("acme", "a-1", "manifest", PartKind::kBlob, "acme data"));
  Must(store.CreateSession("globex", "g-1", true));
  Must(store.PutPart("globex", "g-1", "manifest", PartKind::kBlob, "globex data"));

  for (const auto& [tenant, foreign] :
       std::vector<std::pair<std::string, std::string>>{{"globex", "a-1"}, {"acme", "g-1"}}) {
    SCOPED_TRACE(tenant + " touching " + foreign);
    EXPECT_CODE(store.CreateSession(tenant, foreign, false), kPermissionDenied);
    EXPECT_CODE(store.CreateSession(tenant, foreign, true), kPermissionDenied);
    EXPECT_CODE(store.PutPart(tenant, foreign, "manifest", PartKind::kBlob, "x"),
                kPermissionDenied);
    EXPECT_CODE(store.GetPart(tenant, foreign, "manifest"), kPermissionDenied);
    EXPECT_CODE(store.GetPart(tenant, foreign, "no-such-part"), kPermissionDenied);
    EXPECT_CODE(store.StatSession(tenant, foreign), kPermissionDenied);
    EXPECT_CODE(store.DeleteSession(tenant, foreign), kPermissionDenied);
    EXPECT_CODE(store.CopySession(tenant, foreign, "stolen"), kPermissionDenied);
  }
  // Copying one's own session onto another tenant's id is refused too.
  EXPECT_CODE(store.CopySession("acme", "a-1", "g-1"), kPermissionDenied);

  // Nothing of either tenant changed, and nothing was created.
  EXPECT_EQ(Must(store.GetPart("acme", "a-1", "manifest")).payload, "acme data");
  EXPECT_EQ(Must(store.GetPart("globex", "g-1", "manifest")).payload, "globex data");
  EXPECT_CODE(store.StatSession("acme", "stolen"), kNotFound);
  EXPECT_CODE(store.StatSession("globex", "stolen"), kNotFound);

  const SessionPage acme = Must(store.ListSessions("acme", 0, ""));
  ASSERT_EQ(acme.sessions.size(), 1u);
  EXPECT_EQ(acme.sessions[0].session_id, "a-1");
  const SessionPage globex = Must(store.ListSessions("globex", 0, ""));
  ASSERT_EQ(globex.sessions.size(), 1u);
  EXPECT_EQ(globex.sessions[0].session_id, "g-1");
  EXPECT_TRUE(Must(store.ListSessions("initech", 0, "")).sessions.empty());
}

TEST_P(SnapshotStoreTest, BadIdsAreInvalidArgument) {
  SnapshotStore& store = Open();
  Must(store.CreateSession("acme", "ok", true));
  for (const std::string& id : {std::string(), std::string(".."), std::string(".hidden"),
                                std::string("a/b"), std::string("../../etc"), std::string("sp ace"),
                                std::string(129, 'x'), std::string("nul\0x", 5)}) {
    SCOPED_TRACE(id);
    EXPECT_CODE(store.CreateSession("acme", id, true), kInvalidArgument);
    EXPECT_CODE(store.GetPart("acme", id, "manifest"), kInvalidArgument);
    EXPECT_CODE(store.PutPart("acme", "ok", id, PartKind::kBlob, "x"), kInvalidArgument);
    EXPECT_CODE(store.GetPart("acme", "ok", id), kInvalidArgument);
    EXPECT_CODE(store.CopySession("acme", "ok", id), kInvalidArgument);
  }
  EXPECT_CODE(store.CreateSession("", "s", true), kInvalidArgument);
  EXPECT_CODE(store.CreateSession("acme corp", "s", true), kInvalidArgument);
  EXPECT_CODE(store.CreateSession(std::string(300, 't'), "s", true), kInvalidArgument);
  EXPECT_CODE(store.ListSessions("acme", 10, "../x"), kInvalidArgument);
  EXPECT_CODE(store.PutPart("acme", "ok", "p", static_cast<PartKind>(0), "x"), kInvalidArgument);
  EXPECT_CODE(store.PutPart("acme", "ok", "p", static_cast<PartKind>(7), "x"), kInvalidArgument);
  // The longest allowed names work (they become file names).
  const std::string long_id(128, 's');
  Must(store.CreateSession("acme", long_id, true));
  Must(store.PutPart("acme", long_id, std::string(128, 'p'), PartKind::kBlob, "x"));
  EXPECT_EQ(Must(store.GetPart("acme", long_id, std::string(128, 'p'))).payload, "x");
}

TEST_P(SnapshotStoreTest, StatePartWithBadEnvelopeIsRefused) {
  SnapshotStore& store = Open();
  Must(store.CreateSession("acme", "s", true));
  const std::string good = BuildStateSnapshot(42, 14, 27, {7, 8, 9}, "payload");
  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 0x01;
  std::string bad_magic = good;
  bad_magic[0] = 'X';
  std::string other_version = good;
  other_version[8] = 2;
  for (const std::string& bad : {std::string(), std::string("not a snapshot at all"), flipped,
                                 bad_magic, other_version, good.substr(0, good.size() - 1)}) {
    const absl::StatusOr<PartInfo> put =
        store.PutPart("acme", "s", "layers-14-26", PartKind::kState, bad);
    EXPECT_CODE(put, kInvalidArgument);
    EXPECT_NE(put.status().message().find("layers-14-26"), std::string::npos) << put.status();
  }
  EXPECT_CODE(store.GetPart("acme", "s", "layers-14-26"), kNotFound);
  // The same bytes are fine as an opaque blob.
  Must(store.PutPart("acme", "s", "blob", PartKind::kBlob, flipped));
  EXPECT_EQ(Must(store.PutPart("acme", "s", "layers-14-26", PartKind::kState, good)).num_tokens, 3);
}

TEST_P(SnapshotStoreTest, PartOverMaxPartBytesIsResourceExhausted) {
  SnapshotStoreOptions options = Options();
  options.max_part_bytes = 1000;
  SnapshotStore& store = Open(options);
  Must(store.CreateSession("acme", "s", true));
  Must(store.PutPart("acme", "s", "fits", PartKind::kBlob, std::string(1000, 'a')));
  const absl::StatusOr<PartInfo> big =
      store.PutPart("acme", "s", "big", PartKind::kBlob, std::string(1001, 'a'));
  EXPECT_CODE(big, kResourceExhausted);
  EXPECT_NE(big.status().message().find("big"), std::string::npos);
  EXPECT_CODE(store.GetPart("acme", "s", "big"), kNotFound);
}

TEST_P(SnapshotStoreTest, MaxSessionsIsResourceExhausted) {
  SnapshotStoreOptions options = Options();
  options.max_sessions = 2;
  SnapshotStore& store = Open(options);
  Must(store.CreateSession("acme", "s1", true));
  Must(store.CreateSession("globex", "s2", true));
  EXPECT_CODE(store.CreateSession("acme", "s3", true), kResourceExhausted);
  EXPECT_CODE(store.CopySession("acme", "s1", "s3"), kResourceExhausted);
  Must(store.CreateSession("acme", "s1", false));  // existing: no room needed
  Must(store.DeleteSession("acme", "s1"));
  Must(store.CreateSession("acme", "s3", true));
}

TEST_P(SnapshotStoreTest, SessionsExpireAfterTtlWithoutUse) {
  SnapshotStoreOptions options = Options();
  options.ttl_seconds = 60;
  SnapshotStore& store = Open(options);
  Must(store.CreateSession("acme", "used", true));
  Must(store.PutPart("acme", "used", "manifest", PartKind::kBlob, "m"));
  Must(store.CreateSession("acme", "idle", true));
  Must(store.PutPart("acme", "idle", "manifest", PartKind::kBlob, "m"));

  clock_.AdvanceMs(59'000);
  Must(store.GetPart("acme", "used", "manifest"));  // a read is a use
  Must(store.StatSession("acme", "idle"));          // a stat is not
  clock_.AdvanceMs(1'000);
  EXPECT_CODE(store.StatSession("acme", "idle"), kNotFound);
  EXPECT_CODE(store.GetPart("acme", "idle", "manifest"), kNotFound);
  EXPECT_EQ(Must(store.GetPart("acme", "used", "manifest")).payload, "m");
  const SessionPage page = Must(store.ListSessions("acme", 0, ""));
  ASSERT_EQ(page.sessions.size(), 1u);
  EXPECT_EQ(page.sessions[0].session_id, "used");
  EXPECT_EQ(store.Stats().expirations_total, 1);  // removed when accessed

  // An expired id is free again.
  Must(store.CreateSession("acme", "idle", true));
  EXPECT_TRUE(Must(store.StatSession("acme", "idle")).parts.empty());

  clock_.AdvanceMs(60'000);
  EXPECT_TRUE(Must(store.ListSessions("acme", 0, "")).sessions.empty());
  EXPECT_EQ(store.SweepExpired(), 2);
  EXPECT_EQ(store.SweepExpired(), 0);
  const StoreStats stats = store.Stats();
  EXPECT_EQ(stats.expirations_total, 3);
  EXPECT_EQ(stats.sessions, 0);
  EXPECT_EQ(stats.memory_bytes, 0);
  EXPECT_EQ(stats.disk_bytes, 0);
}

TEST_P(SnapshotStoreTest, FullStoreSweepsExpiredSessionsToMakeRoom) {
  SnapshotStoreOptions options = Options();
  options.ttl_seconds = 10;
  options.max_sessions = 1;
  SnapshotStore& store = Open(options);
  Must(store.CreateSession("acme", "old", true));
  EXPECT_CODE(store.CreateSession("acme", "new", true), kResourceExhausted);
  clock_.AdvanceMs(10'000);
  Must(store.CreateSession("acme", "new", true));
  EXPECT_EQ(store.Stats().expirations_total, 1);
}

TEST_P(SnapshotStoreTest, ListsInIdOrderWithPages) {
  SnapshotStore& store = Open();
  for (const char* id : {"s-3", "s-1", "s-5", "s-2", "s-4"})
    Must(store.CreateSession("acme", id, true));
  Must(store.CreateSession("globex", "s-0", true));
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    const SessionPage page = Must(store.ListSessions("acme", 2, token));
    for (const SessionInfo& info : page.sessions) {
      EXPECT_EQ(info.tenant, "acme");
      seen.push_back(info.session_id);
    }
    token = page.next_page_token;
    ++pages;
  } while (!token.empty());
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, (std::vector<std::string>{"s-1", "s-2", "s-3", "s-4", "s-5"}));
  const SessionPage all = Must(store.ListSessions("acme", 5, ""));
  EXPECT_EQ(all.sessions.size(), 5u);
  EXPECT_TRUE(all.next_page_token.empty());
  EXPECT_EQ(Must(store.ListSessions("acme", 0, "s-4")).sessions.size(), 1u);
}

TEST_P(SnapshotStoreTest, DeleteRemovesTheSessionAndFreesItsId) {
  SnapshotStore& store = Open();
  Must(store.CreateSession("acme", "s", true));
  Must(store.PutPart("acme", "s", "manifest", PartKind::kBlob, "old"));
  Must(store.DeleteSession("acme", "s"));
  EXPECT_CODE(store.StatSession("acme", "s"), kNotFound);
  EXPECT_CODE(store.GetPart("acme", "s", "manifest"), kNotFound);
  EXPECT_CODE(store.DeleteSession("acme", "s"), kNotFound);
  Must(store.CreateSession("globex", "s", true));  // the id is free for anyone
  EXPECT_TRUE(Must(store.StatSession("globex", "s")).parts.empty());
  const StoreStats stats = store.Stats();
  EXPECT_EQ(stats.memory_bytes, 0);
  EXPECT_EQ(stats.disk_bytes, 0);
  EXPECT_EQ(stats.disk_parts, 0);
}

TEST_P(SnapshotStoreTest, CopyForksASession) {
  SnapshotStore& store = Open();
  const std::string state = BuildStateSnapshot(1, 0, 4, {5, 6}, "state");
  Must(store.CreateSession("acme", "base", true));
  Must(store.PutPart("acme", "base", "layers-0-3", PartKind::kState, state));
  Must(store.PutPart("acme", "base", "manifest", PartKind::kBlob, "m1"));
  clock_.AdvanceMs(7);
  const SessionInfo fork = Must(store.CopySession("acme", "base", "fork"));
  EXPECT_EQ(fork.session_id, "fork");
  EXPECT_EQ(fork.tenant, "acme");
  EXPECT_EQ(fork.created_unix_ms, clock_.NowUnixMs());
  ASSERT_EQ(fork.parts.size(), 2u);
  EXPECT_EQ(fork.parts[0].num_tokens, 2);
  EXPECT_EQ(Must(store.GetPart("acme", "fork", "layers-0-3")).payload, state);

  // The two evolve separately.
  Must(store.PutPart("acme", "fork", "manifest", PartKind::kBlob, "m2"));
  EXPECT_EQ(Must(store.GetPart("acme", "base", "manifest")).payload, "m1");
  EXPECT_EQ(Must(store.GetPart("acme", "fork", "manifest")).payload, "m2");
  Must(store.DeleteSession("acme", "base"));
  EXPECT_EQ(Must(store.GetPart("acme", "fork", "layers-0-3")).payload, state);

  EXPECT_CODE(store.CopySession("acme", "fork", "fork"), kAlreadyExists);
  Must(store.CreateSession("acme", "taken", true));
  EXPECT_CODE(store.CopySession("acme", "fork", "taken"), kAlreadyExists);
  EXPECT_TRUE(Must(store.StatSession("acme", "taken")).parts.empty());
}

TEST(SnapshotStoreOptionsTest, ValidateRefusesNonsense) {
  SnapshotStoreOptions ok;
  EXPECT_TRUE(ok.Validate().ok());
  auto with = [](auto change) {
    SnapshotStoreOptions options;
    change(options);
    return options.Validate();
  };
  EXPECT_CODE(with([](auto& o) { o.memory_limit_bytes = 0; }), kInvalidArgument);
  EXPECT_CODE(with([](auto& o) { o.max_part_bytes = 0; }), kInvalidArgument);
  EXPECT_CODE(with([](auto& o) { o.max_part_bytes = kMaxPartBytesLimit + 1; }), kInvalidArgument);
  EXPECT_CODE(with([](auto& o) { o.max_part_bytes = o.memory_limit_bytes + 1; }),
              kInvalidArgument);  // memory only
  EXPECT_TRUE(with([](auto& o) {
                o.data_dir = "/x";
                o.max_part_bytes = o.memory_limit_bytes + 1;
              }).ok());
  EXPECT_CODE(with([](auto& o) { o.max_sessions = -1; }), kInvalidArgument);
  EXPECT_CODE(with([](auto& o) { o.ttl_seconds = -1; }), kInvalidArgument);
  EXPECT_CODE(with([](auto& o) { o.max_disk_bytes = -1; }), kInvalidArgument);
  EXPECT_CODE(SnapshotStore::Open([] {
                SnapshotStoreOptions o;
                o.memory_limit_bytes = -5;
                return o;
              }()),
              kInvalidArgument);
}

// Memory-only stores drop whole least recently used sessions when memory is full.
TEST(SnapshotStoreMemoryOnlyTest, EvictsWholeLeastRecentlyUsedSessions) {
  FakeClock clock;
  SnapshotStoreOptions options;
  options.memory_limit_bytes = 1000;
  options.max_part_bytes = 1000;
  options.clock = &clock;
  std::unique_ptr<SnapshotStore> store = Must(SnapshotStore::Open(options));
  for (const char* id : {"s1", "s2"}) {
    Must(store->CreateSession("acme", id, true));
    Must(store->PutPart("acme", id, "a", PartKind::kBlob, TestBytes(200, 1)));
    Must(store->PutPart("acme", id, "b", PartKind::kBlob, TestBytes(200, 2)));
  }
  Must(store->GetPart("acme", "s1", "a"));  // s2 is now the least recently used
  Must(store->CreateSession("acme", "s3", true));
  Must(store->PutPart("acme", "s3", "a", PartKind::kBlob, TestBytes(300, 3)));
  EXPECT_CODE(store->StatSession("acme", "s2"), kNotFound);
  EXPECT_CODE(store->GetPart("acme", "s2", "b"), kNotFound);
  EXPECT_EQ(Must(store->GetPart("acme", "s1", "b")).payload, TestBytes(200, 2));
  EXPECT_EQ(Must(store->GetPart("acme", "s3", "a")).payload, TestBytes(300, 3));
  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.session_evictions_total, 1);
  EXPECT_EQ(stats.sessions, 2);
  EXPECT_EQ(stats.memory_bytes, 700);

  // A session that alone would exceed memory is refused, without evicting anyone.
  EXPECT_CODE(store->PutPart("acme", "s3", "b", PartKind::kBlob, TestBytes(800, 4)),
              kResourceExhausted);
  EXPECT_EQ(store->Stats().session_evictions_total, 1);
  EXPECT_EQ(Must(store->GetPart("acme", "s3", "a")).payload, TestBytes(300, 3));
  // Replacing a part counts only the new bytes.
  Must(store->PutPart("acme", "s3", "a", PartKind::kBlob, TestBytes(1000, 5)));
  stats = store->Stats();
  EXPECT_EQ(stats.sessions, 1);  // s1 made room
  EXPECT_EQ(stats.memory_bytes, 1000);
  EXPECT_CODE(store->StatSession("acme", "s1"), kNotFound);
}

}  // namespace
}  // namespace deltaserve::services
