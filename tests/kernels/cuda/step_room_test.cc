// The room states leave to the steps' buffers: the most those held at once in work that ran, and
// the need of a refused buffer that would have fit without states; not the partial progress of
// work that failed, and not a buffer too large for the device whatever the states. No GPU needed.
#include "kernels/cuda/step_room.h"

#include "gtest/gtest.h"

namespace deltaserve::kernels::cuda {
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

TEST(StepRoom, FailedWorkCountsOnlyARefusedNeedThatFitsWithoutStates) {
  StepRoom room;
  room.Allocated(&a, 20, false);
  room.Freed(&a);
  room.Checked(true);  // 20
  room.Allocated(&b, 60, false);
  room.Refused(1000, /*fits_without_states=*/false);  // a step too large whatever the states
  room.Freed(&b);
  room.Checked(/*ok=*/false);
  EXPECT_EQ(room.ToLeave(), 20) << "neither the failed work's 60 nor the 1060 count";

  room.Allocated(&c, 25, false);
  room.Refused(10, /*fits_without_states=*/true);  // 35 would have run with fewer states
  room.Freed(&c);
  room.Checked(false);
  EXPECT_EQ(room.ToLeave(), 35);
}

}  // namespace
}  // namespace deltaserve::kernels::cuda
