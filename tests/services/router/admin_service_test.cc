#include "services/router/admin_service.h"

#include "gtest/gtest.h"

namespace deltaserve::services {
namespace {

TEST(AdminServiceTest, OnlyLoopbackAndLocalSocketPeersAreLocal) {
  EXPECT_TRUE(IsLocalPeer("ipv4:127.0.0.1:41234"));
  EXPECT_TRUE(IsLocalPeer("ipv4:127.1.2.3:1"));
  EXPECT_TRUE(IsLocalPeer("ipv6:[::1]:41234"));
  EXPECT_TRUE(IsLocalPeer("ipv6:[::ffff:127.0.0.1]:41234"));
  EXPECT_TRUE(IsLocalPeer("unix:/tmp/deltaserve.sock"));
  EXPECT_FALSE(IsLocalPeer("ipv4:10.0.0.7:41234"));
  EXPECT_FALSE(IsLocalPeer("ipv4:128.0.0.1:41234"));
  EXPECT_FALSE(IsLocalPeer("ipv6:[2001:db8::1]:41234"));
  EXPECT_FALSE(IsLocalPeer("ipv6:[::ffff:10.0.0.7]:41234"));
  EXPECT_FALSE(IsLocalPeer(""));
}

}  // namespace
}  // namespace deltaserve::services
