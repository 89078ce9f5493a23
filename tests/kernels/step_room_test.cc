// The room states leave to the steps' buffers: the most those held at once in work that ran, and
// the need of a refused buffer that would have fit without the states made before that work
// (states that work made and freed count neither way); not the partial progress of work that
// failed, and not a buffer too large for the device whatever the other states (its work's own
// included).
#include "kernels/step_room.h"

#include "gtest/gtest.h"

namespace deltaserve::kernels {
namespace {

int a, b, c, d;  // addresses standing for allocations

TEST(StepRoom, StatesLeaveTheMostTheStepsBuffersHeldInWorkThatRan) {
  StepRoom room;
  room.Allocated(&a, 100, /*state=*/true);
  room.Allocated(&b, 30, false);
  room.Allocated(&c, 10, false);
  room.Freed(&c);
  room.Allocated(&d, 5, false);  // 40 at most at once
  EXPECT_EQ(room.ToLeave(), 0) << "nothing counts before the work is checked";
  room.Checked(/*ok=*/true);
  EXPECT_EQ(room.ToLeave(), 5) << "40 needed, 35 held now";
  room.Freed(&b);
  room.Freed(&d);
  EXPECT_EQ(room.ToLeave(), 40);
  EXPECT_EQ(room.state_bytes(), 100);
  EXPECT_EQ(room.step_bytes(), 0);
  room.Freed(&a);
  EXPECT_EQ(room.state_bytes(), 0);
}

TEST(StepRoom, FailedWorkCountsOnlyARefusedNeedThatFitsWithoutTheStatesBeforeIt) {
  StepRoom room;
  room.Allocated(&a, 20, false);
  room.Freed(&a);
  room.Checked(true);  // 20
  room.Allocated(&b, 60, false);
  room.Refused(1000, /*available=*/100);  // a step too large whatever the states
  room.Freed(&b);
  room.Checked(/*ok=*/false);
  EXPECT_EQ(room.ToLeave(), 20) << "neither the failed work's 60 nor the 1060 count";

  room.Allocated(&a, 50, /*state=*/true);  // another sequence's
  room.Checked(true);
  room.Allocated(&b, 30, /*state=*/true);  // this work's own pages
  room.Allocated(&c, 25, false);
  room.Refused(40, /*available=*/5);  // 5 + 50 (not the own 30) >= 40: fits with fewer states
  room.Freed(&c);
  room.Checked(false);
  EXPECT_EQ(room.ToLeave(), 65);

  room.Allocated(&d, 10, false);
  room.Refused(100, /*available=*/5);  // 5 + 80 < 100: too large whatever the states
  room.Refused(1, /*available=*/-1);   // unknown: not counted
  room.Freed(&d);
  room.Checked(false);
  EXPECT_EQ(room.ToLeave(), 65);
}

TEST(StepRoom, ANewStateFreedBeforeTheCheckNoLongerCountsAsNew) {
  StepRoom room;
  room.Allocated(&a, 50, /*state=*/true);  // another sequence's
  room.Checked(true);
  room.Allocated(&b, 30, /*state=*/true);  // this work's, given back before the failure
  room.Freed(&b);
  room.Allocated(&c, 40, /*state=*/true);  // this work's, held
  room.Allocated(&d, 10, false);
  room.Refused(50, /*available=*/5);  // 5 + 50 (the older state, not c) >= 50
  room.Freed(&d);
  room.Checked(false);
  EXPECT_EQ(room.ToLeave(), 60);
  room.Freed(&a);  // older than the check: state bytes fall, the new count stays as it was
  room.Freed(&c);
  EXPECT_EQ(room.state_bytes(), 0);
}

}  // namespace
}  // namespace deltaserve::kernels
