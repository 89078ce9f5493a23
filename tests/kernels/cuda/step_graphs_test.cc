// CUDA graphs for repeated steps (Backend::BeginStepGraph, kernels/cuda/step_graphs.h): a step
// measured, captured, then replayed with new uploads gives what the same operations give
// without a graph; a step that does not repeat its recording is refused with nothing run, or,
// once segments of it ran, fails as a device failure does. Skips where no GPU exists.
#include <cmath>
#include <thread>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::kernels::cuda {
namespace {

using testing::RandomVector;
using testing::ToBF16;

constexpr int64_t kVocab = 50, kHidden = 128, kOut = 96;
constexpr float kEps = 1e-6f;

// A small step: embed the ids, a bf16 product, an RMSNorm.
struct Weights {
  TensorView table, w, norm;
};

class StepGraphsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!CudaDeviceAvailable(&why)) GTEST_SKIP() << "no usable CUDA device: " << why;
    cuda_ = CudaBackend::Create({}, &why);
    ASSERT_NE(cuda_, nullptr) << why;
    table_ = RandomVector(kVocab * kHidden, 1, 1.0f);
    w_ = ToBF16(RandomVector(kOut * kHidden, 2, 0.1f));
    norm_ = RandomVector(kOut, 3, 1.0f);
    gpu_ = Adopt(*cuda_);
    cpu_w_ = Adopt(cpu_);
  }

  Weights Adopt(Backend& backend) {
    return {backend.AdoptWeight(MakeView(table_.data(), DType::kF32, kVocab, kHidden)),
            backend.AdoptWeight(MakeView(w_.data(), DType::kBF16, kOut, kHidden)),
            backend.AdoptWeight(MakeView(norm_.data(), DType::kF32, 1, kOut))};
  }

  static Tensor RunStep(Backend& backend, const Weights& w, const std::vector<int32_t>& ids) {
    const auto rows = static_cast<int64_t>(ids.size());
    Tensor x = backend.Allocate(rows, kHidden, DType::kF32);
    backend.Embed(ids, w.table, x.view());
    Tensor y = backend.Allocate(rows, kOut, DType::kF32);
    backend.MatMul(x.view(), w.w, y.view());
    backend.RmsNorm(y.view(), w.norm, kEps, y.view());
    return y;
  }

  std::vector<float> Expected(const std::vector<int32_t>& ids) {
    Tensor y = RunStep(cpu_, cpu_w_, ids);
    std::vector<float> host(y.view().rows * kOut);
    cpu_.Download(y.view(), host.data());
    return host;
  }

  std::vector<float> ToHost(TensorView v) {
    std::vector<float> host(v.rows * v.cols);
    cuda_->Download(v, host.data());
    return host;
  }

  static std::vector<int32_t> Ids(int64_t rows, int seed) {
    std::vector<int32_t> ids(rows);
    for (int64_t i = 0; i < rows; ++i) ids[i] = static_cast<int32_t>((i * 7 + seed * 13) % kVocab);
    return ids;
  }

  // bf16 activations in the product (rows > 8 take cuBLAS): a few parts in 1e3.
  static void ExpectClose(const std::vector<float>& gpu, const std::vector<float>& cpu) {
    ASSERT_EQ(gpu.size(), cpu.size());
    for (size_t i = 0; i < gpu.size(); ++i) ASSERT_NEAR(gpu[i], cpu[i], 2e-2) << i;
  }

  std::vector<float> table_, norm_;
  std::vector<uint16_t> w_;
  cpu::CpuBackend cpu_{{.num_threads = 1}};
  std::unique_ptr<CudaBackend> cuda_;
  Weights gpu_, cpu_w_;
};

TEST_F(StepGraphsTest, AStepIsMeasuredCapturedThenReplayedWithNewUploads) {
  // 4 rows: the skinny product kernel; 16 rows: cuBLAS, captured on its own handle.
  for (int64_t rows : {4, 16}) {
    SCOPED_TRACE(rows);
    const StepGraphCounts before = cuda_->step_graph_counts();
    const StepGraphKey key{.tokens = rows, .sequences = rows, .logit_rows = rows, .max_keys = 100};
    for (int step = 0; step < 6; ++step) {
      const std::vector<int32_t> ids = Ids(rows, step);
      std::unique_ptr<StepGraph> graph = cuda_->BeginStepGraph(key);
      ASSERT_NE(graph, nullptr);
      Tensor y = RunStep(*cuda_, gpu_, ids);
      ASSERT_TRUE(graph->Launch()) << "step " << step;
      ExpectClose(ToHost(y.view()), Expected(ids));
      // The same bits as the operations without a graph.
      Tensor eager = RunStep(*cuda_, gpu_, ids);
      EXPECT_EQ(ToHost(eager.view()), ToHost(y.view())) << "step " << step;
    }
    const StepGraphCounts after = cuda_->step_graph_counts();
    EXPECT_EQ(after.measured - before.measured, 1);
    EXPECT_EQ(after.captured - before.captured, 1);
    EXPECT_EQ(after.replayed - before.replayed, 4);
    EXPECT_EQ(after.failed - before.failed, 0);
    EXPECT_FALSE(cuda_->TakeFailure().failed());
  }
}

TEST_F(StepGraphsTest, AStepThatDoesNotRepeatItsRecordingIsRefusedUnrun) {
  const StepGraphKey key{.tokens = 4, .sequences = 4, .logit_rows = 4, .max_keys = 100};
  for (int step = 0; step < 2; ++step) {  // measured, then captured
    std::unique_ptr<StepGraph> graph = cuda_->BeginStepGraph(key);
    ASSERT_NE(graph, nullptr);
    Tensor y = RunStep(*cuda_, gpu_, Ids(4, step));
    ASSERT_TRUE(graph->Launch());
  }
  // A state the replay would have to write: it must keep its contents when the replay is refused.
  const std::vector<float> kept(kOut, 5.0f);
  Tensor state = cuda_->Allocate(1, kOut, DType::kF32);
  cuda_->Upload(kept.data(), state.view());
  {
    std::unique_ptr<StepGraph> graph = cuda_->BeginStepGraph(key);
    ASSERT_NE(graph, nullptr);
    Tensor y = RunStep(*cuda_, gpu_, Ids(4, 7));
    Tensor extra = cuda_->Allocate(1, kOut, DType::kF32);  // not in the recording
    cuda_->Copy(y.view().Rows(0, 1), state.view());
    EXPECT_FALSE(graph->Launch());
  }
  EXPECT_EQ(ToHost(state.view()), kept);
  EXPECT_EQ(cuda_->step_graph_counts().failed, 1);
  EXPECT_FALSE(cuda_->TakeFailure().failed());

  // A download inside a region cannot be recorded either; the next steps record again.
  const StepGraphKey other{.tokens = 2, .sequences = 2, .logit_rows = 2, .max_keys = 100};
  {
    std::unique_ptr<StepGraph> graph = cuda_->BeginStepGraph(other);
    ASSERT_NE(graph, nullptr);
    Tensor y = RunStep(*cuda_, gpu_, Ids(2, 1));
    std::vector<float> host(2 * kOut);
    cuda_->Download(y.view(), host.data());
    EXPECT_TRUE(graph->Launch());  // measuring: the work ran as usual, but the key learnt nothing
  }
  for (int step = 0; step < 3; ++step) {
    std::unique_ptr<StepGraph> graph = cuda_->BeginStepGraph(key);
    ASSERT_NE(graph, nullptr);
    const std::vector<int32_t> ids = Ids(4, 20 + step);
    Tensor y = RunStep(*cuda_, gpu_, ids);
    ASSERT_TRUE(graph->Launch()) << step;
    ExpectClose(ToHost(y.view()), Expected(ids));
  }
}

// ~150 device calls: replayed as three segments (cut after the 16th call, then every 64), each
// launched while the host replays the next.
TEST_F(StepGraphsTest, ALongStepReplaysInSegments) {
  const auto long_step = [&](Backend& backend, const Weights& w, int seed) {
    Tensor sum = backend.Allocate(4, kOut, DType::kF32);
    backend.Zero(sum.view());
    for (int block = 0; block < 30; ++block) {
      Tensor y = RunStep(backend, w, Ids(4, seed + block));
      backend.Add(sum.view(), y.view());
    }
    return sum;
  };
  const StepGraphKey key{.tokens = 4, .sequences = 4, .logit_rows = 4, .max_keys = 100};
  for (int step = 0; step < 5; ++step) {
    std::unique_ptr<StepGraph> graph = cuda_->BeginStepGraph(key);
    ASSERT_NE(graph, nullptr);
    Tensor sum = long_step(*cuda_, gpu_, step);
    ASSERT_TRUE(graph->Launch()) << step;
    const std::vector<float> got = ToHost(sum.view());
    graph.reset();
    Tensor eager = long_step(*cuda_, gpu_, step);
    EXPECT_EQ(got, ToHost(eager.view())) << "step " << step;
  }
  EXPECT_EQ(cuda_->step_graph_counts().replayed, 3);
  EXPECT_EQ(cuda_->step_graph_counts().failed, 0);

  // A replay that differs after its first segment ran cannot be issued again: the step fails as a
  // device failure does, and the shape is measured and recorded anew.
  {
    std::unique_ptr<StepGraph> graph = cuda_->BeginStepGraph(key);
    ASSERT_NE(graph, nullptr);
    Tensor sum = long_step(*cuda_, gpu_, 9);
    Tensor extra = cuda_->Allocate(1, 8, DType::kF32);  // not in the recording
    EXPECT_TRUE(graph->Launch());
  }
  const BackendFailure failure = cuda_->TakeFailure();
  EXPECT_TRUE(failure.failed());
  EXPECT_FALSE(failure.out_of_memory);
  EXPECT_NE(failure.message.find("diverged"), std::string::npos) << failure.message;
  for (int step = 0; step < 3; ++step) {
    std::unique_ptr<StepGraph> graph = cuda_->BeginStepGraph(key);
    ASSERT_NE(graph, nullptr);
    Tensor sum = long_step(*cuda_, gpu_, 20 + step);
    ASSERT_TRUE(graph->Launch()) << step;
    const std::vector<float> got = ToHost(sum.view());
    graph.reset();
    Tensor eager = long_step(*cuda_, gpu_, 20 + step);
    EXPECT_EQ(got, ToHost(eager.view())) << "step " << step;
  }
  EXPECT_FALSE(cuda_->TakeFailure().failed());
}

TEST_F(StepGraphsTest, OneThreadHoldsARegionAtATime) {
  const StepGraphKey key{.tokens = 4, .sequences = 4, .logit_rows = 4, .max_keys = 100};
  std::unique_ptr<StepGraph> graph = cuda_->BeginStepGraph(key);
  ASSERT_NE(graph, nullptr);
  bool other_got_one = true;
  std::vector<float> other_result;
  std::thread other([&] {
    other_got_one = cuda_->BeginStepGraph(key) != nullptr;
    // Its operations run as usual meanwhile.
    Tensor y = RunStep(*cuda_, gpu_, Ids(4, 3));
    other_result = ToHost(y.view());
  });
  other.join();
  EXPECT_FALSE(other_got_one);
  ExpectClose(other_result, Expected(Ids(4, 3)));
  Tensor y = RunStep(*cuda_, gpu_, Ids(4, 1));
  ASSERT_TRUE(graph->Launch());
  ExpectClose(ToHost(y.view()), Expected(Ids(4, 1)));
}

}  // namespace
}  // namespace deltaserve::kernels::cuda
