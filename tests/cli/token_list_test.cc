#include "cli/token_list.h"

#include "gtest/gtest.h"

namespace deltaserve::cli {
namespace {

TEST(ParseTokenList, ParsesIdsAndRejectsJunk) {
  EXPECT_EQ(*ParseTokenList("5,6,7", "--tokens"), (std::vector<int32_t>{5, 6, 7}));
  EXPECT_TRUE(ParseTokenList("", "--tokens")->empty());
  for (const char* bad : {"5,,6", "a", "-1", "5,", "1.5", "99999999999", " 5"}) {
    absl::StatusOr<std::vector<int32_t>> parsed = ParseTokenList(bad, "--tokens");
    EXPECT_FALSE(parsed.ok()) << bad;
    if (!parsed.ok()) {
      EXPECT_NE(parsed.status().message().find("--tokens"), std::string::npos);
    }
  }
}

TEST(ParsePositions, LastAllAndLists) {
  EXPECT_EQ(*ParsePositions("last", 4), (std::vector<int64_t>{3}));
  EXPECT_EQ(*ParsePositions("all", 3), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(*ParsePositions("0,2", 3), (std::vector<int64_t>{0, 2}));
  EXPECT_FALSE(ParsePositions("3", 3).ok());
  EXPECT_FALSE(ParsePositions("first", 3).ok());
}

}  // namespace
}  // namespace deltaserve::cli
