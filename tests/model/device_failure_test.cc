// Memory as a limit a server lives with, on the CPU backend's memory limit (memory_limit_cases.h;
// the same cases run on a GPU in cuda_model_test.cc).
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kimi_linear_model.h"
#include "tests/model/memory_limit_cases.h"

namespace deltaserve::model {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";
// Below what a 4,000-token prompt's step needs on this model (2 MB per activation, several at once).
constexpr int64_t kLimit = int64_t{4} << 20;

// The fixture's model on a backend capped at kLimit and, as the reference, on one without a cap.
struct CappedAndUncapped {
  void Load() {
    auto loaded = KimiLinearModel::Load(kFixture, capped);
    auto loaded_reference = KimiLinearModel::Load(kFixture, uncapped);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ASSERT_TRUE(loaded_reference.ok()) << loaded_reference.status();
    model = *std::move(loaded);
    reference = *std::move(loaded_reference);
  }
  kernels::cpu::CpuBackend capped{{.num_threads = 2, .memory_limit_bytes = kLimit}};
  kernels::cpu::CpuBackend uncapped{{.num_threads = 2}};
  std::unique_ptr<KimiLinearModel> model, reference;
};

TEST(ModelMemoryLimit, AStepPastTheLimitFailsAndTheNextOneWorks) {
  CappedAndUncapped both;
  ASSERT_NO_FATAL_FAILURE(both.Load());
  testing::ExpectAStepPastTheLimitFailsAndTheNextOneWorks(*both.model, *both.reference, 4000);
}

TEST(ModelMemoryLimit, AStepWhoseLatentPagesDoNotFitChangesNoState) {
  CappedAndUncapped both;
  ASSERT_NO_FATAL_FAILURE(both.Load());
  testing::ExpectAStepWhoseLatentPagesDoNotFitChangesNoState(both.capped, *both.model, *both.reference);
}

}  // namespace
}  // namespace deltaserve::model
