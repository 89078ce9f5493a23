// The CPU backend's memory limit: allocations past it fail as out of memory and are held as the
// calling thread's failure, the thread's operations skipped until it takes it; states leave the
// steps' buffers the room those have held at once.
#include "kernels/cpu/cpu_backend.h"

#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::kernels::cpu {
namespace {

using testing::RandomVector;
using testing::View;

constexpr int64_t kMiB = int64_t{1} << 20;

Tensor Floats(CpuBackend& backend, int64_t bytes, bool state = false, bool leave_step_room = true) {
  return state ? backend.AllocateState(1, bytes / 4, DType::kF32, leave_step_room)
               : backend.Allocate(1, bytes / 4, DType::kF32);
}

TEST(CpuBackendMemoryLimit, AFailureIsHeldUntilTakenAndTheBackendKeepsWorking) {
  CpuBackend backend({.num_threads = 2, .memory_limit_bytes = kMiB});
  Tensor huge = Floats(backend, 4 * kMiB);
  EXPECT_TRUE(huge.empty());
  Tensor small = backend.Allocate(4, 4, DType::kF32);
  EXPECT_TRUE(small.empty()) << "allocations after a failure are skipped";

  // Operations are skipped too: the output keeps what it held.
  std::vector<float> x = RandomVector(3 * 8, 1), w = RandomVector(5 * 8, 2), y(3 * 5, -7.0f);
  backend.MatMul(View(x, 3, 8), View(w, 5, 8), View(y, 3, 5));
  EXPECT_EQ(y, std::vector<float>(3 * 5, -7.0f));

  // Another thread holds no failure and works meanwhile.
  std::thread other([&] {
    Tensor fits = backend.Allocate(4, 4, DType::kF32);
    EXPECT_FALSE(fits.empty());
    EXPECT_FALSE(backend.TakeFailure().failed());
  });
  other.join();

  BackendFailure failure = backend.TakeFailure();
  EXPECT_TRUE(failure.out_of_memory);
  EXPECT_NE(failure.message.find("memory limit of 1048576 bytes"), std::string::npos) << failure.message;
  EXPECT_FALSE(backend.TakeFailure().failed()) << "a failure is reported once";

  backend.MatMul(View(x, 3, 8), View(w, 5, 8), View(y, 3, 5));
  for (int64_t j = 0; j < 5; ++j) {
    float want = 0;
    for (int64_t c = 0; c < 8; ++c) want += x[c] * w[j * 8 + c];
    EXPECT_NEAR(y[j], want, 1e-5f);
  }
  Tensor most = Floats(backend, kMiB);
  EXPECT_FALSE(most.empty()) << "freed memory counts again";
  EXPECT_FALSE(backend.TakeFailure().failed());
}

TEST(CpuBackendMemoryLimit, AStateLeavesTheStepsBuffersTheRoomTheyHaveHeld) {
  CpuBackend backend({.num_threads = 1, .memory_limit_bytes = 64 * kMiB});
  EXPECT_FALSE(Floats(backend, 8 * kMiB, /*state=*/true).empty()) << "nothing to leave yet";
  {
    Tensor step_a = Floats(backend, 30 * kMiB);
    Tensor step_b = Floats(backend, 10 * kMiB);  // 40 MiB held at once
    ASSERT_FALSE(step_a.empty() || step_b.empty());
  }
  EXPECT_FALSE(backend.TakeFailure().failed());  // the step ran: its 40 MiB count
  Tensor too_big = Floats(backend, 30 * kMiB, /*state=*/true);  // would leave 34 MiB
  EXPECT_TRUE(too_big.empty());
  BackendFailure failure = backend.TakeFailure();
  EXPECT_TRUE(failure.out_of_memory);
  EXPECT_NE(failure.message.find("steps' buffers"), std::string::npos) << failure.message;
  too_big = Floats(backend, 30 * kMiB, /*state=*/true, /*leave_step_room=*/false);
  EXPECT_FALSE(too_big.empty()) << "a sequence alone may take the steps' room";
  too_big = Tensor();
  Tensor state = Floats(backend, 20 * kMiB, /*state=*/true);  // leaves 44 MiB
  ASSERT_FALSE(state.empty());
  Tensor step = Floats(backend, 40 * kMiB);
  EXPECT_FALSE(step.empty()) << "the room the state left is the step's";
  EXPECT_FALSE(backend.TakeFailure().failed());

  // A step buffer refused where it would fit with fewer states counts its need: the next state
  // leaves room for it.
  step = Tensor();
  EXPECT_FALSE(backend.TakeFailure().failed());
  EXPECT_TRUE(Floats(backend, 50 * kMiB).empty());  // 20 + 50 past 64 MiB
  EXPECT_TRUE(backend.TakeFailure().out_of_memory);
  EXPECT_TRUE(Floats(backend, kMiB, /*state=*/true).empty()) << "20 + 1 + 50 > 64 MiB";
  EXPECT_TRUE(backend.TakeFailure().out_of_memory);
}

TEST(CpuBackendMemoryLimit, WithoutALimitNothingIsRefused) {
  CpuBackend backend({.num_threads = 1});
  {
    Tensor step = Floats(backend, 64 * kMiB);
    ASSERT_FALSE(step.empty());
  }
  EXPECT_FALSE(backend.TakeFailure().failed());
  EXPECT_FALSE(Floats(backend, 256 * kMiB, /*state=*/true).empty());
  EXPECT_FALSE(backend.TakeFailure().failed());
}

}  // namespace
}  // namespace deltaserve::kernels::cpu
