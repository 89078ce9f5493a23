// Model sources: `random:<preset>[:<seed>]` parses strictly, anything else is a directory, and
// either kind yields its configuration.
#include "model/config/model_source.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/presets.h"
#include "tests/model/config/config_test_util.h"

namespace deltaserve::model {
namespace {

using ::testing::HasSubstr;

TEST(ModelSourceTest, ParsesPresetAndSeed) {
  absl::StatusOr<std::optional<RandomModelSource>> plain = ParseRandomModelSource("random:tiny");
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(plain->has_value());
  EXPECT_EQ((*plain)->preset, "tiny");
  EXPECT_EQ((*plain)->seed, 0u);

  absl::StatusOr<std::optional<RandomModelSource>> seeded =
      ParseRandomModelSource("random:kimi-linear-48b-a3b-all-mla:18446744073709551615");
  ASSERT_TRUE(seeded.ok()) << seeded.status();
  ASSERT_TRUE(seeded->has_value());
  EXPECT_EQ((*seeded)->preset, "kimi-linear-48b-a3b-all-mla");
  EXPECT_EQ((*seeded)->seed, 18446744073709551615u);
}

TEST(ModelSourceTest, AnythingElseIsADirectory) {
  for (const std::string source :
       {"models/tiny", "./random:tiny", "/tmp/random", "Random:tiny", ""}) {
    absl::StatusOr<std::optional<RandomModelSource>> parsed = ParseRandomModelSource(source);
    ASSERT_TRUE(parsed.ok()) << source << ": " << parsed.status();
    EXPECT_FALSE(parsed->has_value()) << source;
  }
}

TEST(ModelSourceTest, MalformedRandomSourcesAreInvalidArgument) {
  for (const std::string source :
       {"random:", "random:huge", "random:huge:1", "random:tiny:", "random:tiny:x",
        "random:tiny:-1", "random:tiny:+1", "random:tiny: 1", "random:tiny:1:2",
        "random:tiny:18446744073709551616"}) {
    SCOPED_TRACE(source);
    const absl::Status status = ParseRandomModelSource(source).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()), HasSubstr("'" + source + "'"));
  }
  const std::string unknown(ParseRandomModelSource("random:huge").status().message());
  for (const std::string& preset : PresetNames()) EXPECT_THAT(unknown, HasSubstr(preset));
}

TEST(ModelSourceTest, ConfigComesFromThePresetOrTheDirectory) {
  absl::StatusOr<KimiLinearConfig> random = LoadModelSourceConfig("random:small-all-mla:9");
  ASSERT_TRUE(random.ok()) << random.status();
  EXPECT_TRUE(*random == *PresetConfig("small-all-mla"));

  const std::string fixture_dir = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";
  absl::StatusOr<KimiLinearConfig> directory = LoadModelSourceConfig(fixture_dir);
  ASSERT_TRUE(directory.ok()) << directory.status();
  EXPECT_TRUE(*directory == *LoadKimiLinearConfig(testing::TinyFixturePath()));

  EXPECT_EQ(LoadModelSourceConfig("random:nope").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadModelSourceConfig(fixture_dir + "/missing").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace deltaserve::model
