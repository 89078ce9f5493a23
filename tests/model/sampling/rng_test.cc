// Rng: published splitmix64 outputs, pinned xoshiro256** outputs, and the uniform's range.
#include "model/sampling/rng.h"

#include <cstdint>

#include "gtest/gtest.h"

namespace deltaserve::model {
namespace {

TEST(RngTest, SplitMix64MatchesPublishedSequence) {
  // Seed 1234567, as in the Rosetta Code "Splitmix64" task.
  uint64_t state = 1234567;
  const uint64_t expected[] = {6457827717110365317ULL, 3203168211198807973ULL,
                               9817491932198370423ULL, 4593380528125082431ULL,
                               16408922859458223821ULL};
  for (const uint64_t value : expected) EXPECT_EQ(SplitMix64(state), value);
}

// Pinned (and checked against an independent Python transcription): a change here changes
// every seeded completion the engine produces.
TEST(RngTest, XoshiroStreamIsPinned) {
  Rng zero(0);
  EXPECT_EQ(zero.Next(), 0x99ec5f36cb75f2b4ULL);
  EXPECT_EQ(zero.Next(), 0xbf6e1f784956452aULL);
  EXPECT_EQ(zero.Next(), 0x1a5f849d4933e6e0ULL);
  EXPECT_EQ(zero.Next(), 0x6aa594f1262d2d2cULL);
  Rng answer(42);
  EXPECT_EQ(answer.Next(), 0x15780b2e0c2ec716ULL);
  EXPECT_EQ(answer.Next(), 0x6104d9866d113a7eULL);
}

TEST(RngTest, UniformIsInUnitIntervalWithMeanOneHalf) {
  Rng rng(7);
  constexpr int kDraws = 100000;
  double sum = 0.0;
  for (int i = 0; i < kDraws; ++i) {
    const double u = rng.NextUniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  // Std of the mean is sqrt(1/12 / n) ~ 0.00091; 6 sigma holds for any seed in practice.
  EXPECT_NEAR(sum / kDraws, 0.5, 6 * 0.00091);
}

}  // namespace
}  // namespace deltaserve::model
