// The memory tier's LRU bookkeeping: by session, then by part within a session.
#include "services/session_store/memory_tier.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace deltaserve::services {
namespace {

MemoryTier::Payload Bytes(size_t n) { return std::make_shared<const std::string>(n, 'x'); }

TEST(MemoryTierTest, CountsBytesAndParts) {
  MemoryTier tier;
  tier.Put("s1", "a", Bytes(10));
  tier.Put("s1", "b", Bytes(20));
  tier.Put("s2", "a", Bytes(5));
  EXPECT_EQ(tier.bytes(), 35);
  EXPECT_EQ(tier.parts(), 3);
  EXPECT_EQ(tier.SessionBytes("s1"), 30);
  tier.Put("s1", "a", Bytes(1));  // replace
  EXPECT_EQ(tier.bytes(), 26);
  EXPECT_EQ(tier.parts(), 3);
  tier.Erase("s1", "b");
  EXPECT_EQ(tier.bytes(), 6);
  tier.EraseSession("s1");
  EXPECT_EQ(tier.bytes(), 5);
  EXPECT_EQ(tier.parts(), 1);
  EXPECT_FALSE(tier.Contains("s1", "a"));
  EXPECT_TRUE(tier.Contains("s2", "a"));
  EXPECT_EQ(tier.Get("s1", "a"), nullptr);
}

TEST(MemoryTierTest, LeastRecentlyUsedSessionThenPart) {
  MemoryTier tier;
  tier.Put("s1", "a", Bytes(1));
  tier.Put("s1", "b", Bytes(1));
  tier.Put("s2", "a", Bytes(1));
  auto victim = tier.LeastRecentlyUsed("");
  ASSERT_TRUE(victim.has_value());
  EXPECT_EQ(victim->session_id, "s1");
  EXPECT_EQ(victim->part, "a");
  ASSERT_NE(tier.Get("s1", "a"), nullptr);  // s1 and its part a become most recent
  victim = tier.LeastRecentlyUsed("");
  EXPECT_EQ(victim->session_id, "s2");
  victim = tier.LeastRecentlyUsed("s2");
  EXPECT_EQ(victim->session_id, "s1");
  EXPECT_EQ(victim->part, "b");
  tier.Erase("s1", "b");
  tier.Erase("s1", "a");
  EXPECT_FALSE(tier.LeastRecentlyUsed("s2").has_value());
}

}  // namespace
}  // namespace deltaserve::services
