// Every CUDA backend operation against the CPU backend on fresh random inputs: odd shapes,
// ragged batches, strided views, strong decay. Outputs are poisoned with NaN first, so an
// element the GPU never writes fails. Skips where no GPU exists.
#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>
#include <utility>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/mla_expanded_tc.h"
#include "kernels/dtype.h"
#include "kernels/sampling.h"
#include "tests/testing/paged_latent.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::kernels::cuda {
namespace {

using testing::RandomVector;
using testing::RoundedToBF16;
using testing::ToBF16;
using testing::View;

// The GPU rounds activations to bf16 before a matrix product (8 significant bits): errors of a
// few parts in 1e3 of the output scale. Everything else is fp32 and agrees to ~1e-6; 1e-4 keeps
// room for different summation orders over long sequences.
constexpr double kMatMulTolerance = 1e-2;
constexpr double kFp32Tolerance = 1e-4;
// Attention with bf16 queries and keys: on the MLA tests' inputs (normal q and latent, kv_b of
// scale 0.2) the logits have a spread of ~3.7, and a key's bf16 rounding moves its logit by ~0.015,
// which a peaked softmax turns into output errors of up to ~|v - o| · 0.015 with |v - o| near 10:
// ~1-1.5% of the output scale at worst.
constexpr double kAttentionTolerance = 2e-2;
// An output stored in bf16 (the CUDA backend's KDA activations): the rounding moves each element by
// up to 2^-9 of itself, so up to ~0.2% of the output scale.
constexpr double kBf16OutputTolerance = 4e-3;

class CudaVsCpu : public ::testing::Test {
 public:
  void SetUp() override {
    std::string why;
    if (!CudaDeviceAvailable(&why)) GTEST_SKIP() << "no usable CUDA device: " << why;
    cuda_ = CudaBackend::Create({}, &why);
    ASSERT_NE(cuda_, nullptr) << why;
  }

  // A device copy of host floats, stored as `dtype` (F32, or BF16: rounded).
  Tensor ToDevice(const std::vector<float>& host, int64_t rows, int64_t cols, DType dtype = DType::kF32) {
    Tensor t = cuda_->Allocate(rows, cols, dtype);
    if (dtype == DType::kBF16) {
      cuda_->Upload(ToBF16(host).data(), t.view());
    } else {
      cuda_->Upload(host.data(), t.view());
    }
    return t;
  }
  // A device tensor filled with NaN.
  Tensor Poisoned(int64_t rows, int64_t cols, DType dtype = DType::kF32) {
    return ToDevice(std::vector<float>(rows * cols, NAN), rows, cols, dtype);
  }
  // A device view's values as floats (F32 or BF16).
  std::vector<float> ToHost(TensorView v) {
    std::vector<float> host(v.rows * v.cols);
    if (v.dtype == DType::kBF16) {
      std::vector<uint16_t> bits(host.size());
      cuda_->Download(v, bits.data());
      std::transform(bits.begin(), bits.end(), host.begin(), BF16ToF32);
    } else {
      cuda_->Download(v, host.data());
    }
    return host;
  }

  // Host experts adopted by the CUDA backend.
  ExpertWeights AdoptExpert(const ExpertWeights& host) {
    return {cuda_->AdoptWeight(host.gate), cuda_->AdoptWeight(host.up), cuda_->AdoptWeight(host.down)};
  }
  std::vector<ExpertWeights> AdoptExperts(std::span<const ExpertWeights> host) {
    std::vector<ExpertWeights> adopted;
    for (const ExpertWeights& w : host) adopted.push_back(AdoptExpert(w));
    return adopted;
  }

  static void ExpectClose(const std::vector<float>& gpu, const std::vector<float>& cpu, double tolerance,
                          const std::string& what) {
    ASSERT_EQ(gpu.size(), cpu.size()) << what;
    double scale = 1e-6;
    for (float v : cpu) scale = std::max(scale, static_cast<double>(std::fabs(v)));
    for (size_t i = 0; i < gpu.size(); ++i) {
      ASSERT_TRUE(std::isfinite(gpu[i])) << what << ": element " << i << " not written or not finite";
      ASSERT_NEAR(gpu[i], cpu[i], tolerance * scale) << what << ": element " << i;
    }
  }

  cpu::CpuBackend cpu_{{.num_threads = 2}};
  std::unique_ptr<CudaBackend> cuda_;
};

TEST_F(CudaVsCpu, MatMulWithBf16AndF32Weights) {
  for (const auto& [t, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 200, 96}, {7, 65, 130}, {130, 64, 33}}) {
    std::vector<float> x = RandomVector(t * k, 1 + t);
    std::vector<float> w = RandomVector(n * k, 2 + t);
    std::vector<uint16_t> w_bf16 = ToBF16(w);
    const TensorView host_bf16 = MakeView(w_bf16.data(), DType::kBF16, n, k);
    std::vector<float> cpu_out(t * n);
    cpu_.MatMul(View(x, t, k), host_bf16, View(cpu_out, t, n));
    Tensor dx = ToDevice(x, t, k);
    // A strided output: every row has 3 extra columns that must stay untouched.
    Tensor dy = Poisoned(t, n + 3);
    cuda_->MatMul(dx.view(), cuda_->AdoptWeight(host_bf16), dy.view().Cols(0, n));
    std::vector<float> gpu = ToHost(dy.view().Cols(0, n));
    ExpectClose(gpu, cpu_out, kMatMulTolerance, "bf16 matmul");

    std::vector<float> cpu_f32(t * n);
    cpu_.MatMul(View(x, t, k), View(w, n, k), View(cpu_f32, t, n));
    Tensor dz = Poisoned(t, n);
    cuda_->MatMul(dx.view(), cuda_->AdoptWeight(View(w, n, k)), dz.view());
    ExpectClose(ToHost(dz.view()), cpu_f32, kFp32Tolerance, "f32 matmul");
  }
}

// Up to skinny_matmul_max_rows rows (here its most, 8) against a bf16 weight take the skinny
// kernel: fp32 activations, so it agrees with the CPU to summation order (1e-4), far tighter than
// the tensor-core path's bf16-rounded inputs (which the 9-row case keeps). Strided input rows,
// reductions not a multiple of the warp slice, output columns not a multiple of a block's, rows
// enough for one warp per row (17,000). At one row a warp's first four 256-element slices are
// loaded before the wait for the kernel ahead: warps with fewer slices than that (k = 8, 520;
// 4,096 over 8 warps a row), with more (one warp a row of 17,000: 9 slices of 2,304, and in f16
// 10 of 2,312, the last partial).
TEST_F(CudaVsCpu, SkinnyMatMulForDecodeRows) {
  std::string why;
  cuda_ = CudaBackend::Create({.skinny_matmul_max_rows = 8}, &why);
  ASSERT_NE(cuda_, nullptr) << why;
  for (const auto& [t, n, k, f16] : {std::tuple<int64_t, int64_t, int64_t, bool>{1, 203, 520, false},
                                     {1, 5, 8, false}, {1, 2304, 4096, false}, {1, 17000, 2304, false},
                                     {1, 17000, 2312, true}, {2, 5, 8, false}, {5, 64, 2304, false},
                                     {8, 130, 264, false}, {9, 130, 264, false}, {3, 17000, 520, false}}) {
    const int64_t x_stride = k + 4;
    std::vector<float> x = RandomVector(t * x_stride, 10 + t);
    std::vector<float> w_f32 = RandomVector(n * k, 20 + t);
    std::vector<uint16_t> w = ToBF16(w_f32);
    if (f16) std::transform(w_f32.begin(), w_f32.end(), w.begin(), F32ToF16);
    const TensorView host_w = MakeView(w.data(), f16 ? DType::kF16 : DType::kBF16, n, k);
    const TensorView host_x{x.data(), DType::kF32, t, k, x_stride};
    std::vector<float> cpu_out(t * n);
    cpu_.MatMul(host_x, host_w, View(cpu_out, t, n));
    Tensor dx = ToDevice(x, t, x_stride);
    Tensor dy = Poisoned(t, n);
    cuda_->MatMul(dx.view().Cols(0, k), cuda_->AdoptWeight(host_w), dy.view());
    ExpectClose(ToHost(dy.view()), cpu_out, t <= 8 ? kFp32Tolerance : kMatMulTolerance,
                "matmul of " + std::to_string(t) + " rows");
  }
}

// A product into a bf16 output (the KDA gates' logits in prefill) on each path: the skinny
// kernel (1 and 3 rows), cuBLAS with bf16 weights (40 rows), and the products cuBLAS cannot write
// in bf16 (an fp32 weight, an f16 one), rounded afterwards; strided outputs whose extra columns
// stay untouched. Then two products together in one skinny launch, into bf16.
TEST_F(CudaVsCpu, MatMulIntoBf16Outputs) {
  std::string why;
  cuda_ = CudaBackend::Create({.skinny_matmul_max_rows = 8}, &why);
  ASSERT_NE(cuda_, nullptr) << why;
  for (const auto& [t, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 203, 520}, {3, 64, 264}, {40, 130, 96}}) {
    SCOPED_TRACE(t);
    std::vector<float> x = RandomVector(t * k, 30 + t), w = RandomVector(n * k, 31 + t);
    std::vector<uint16_t> w_bf16 = ToBF16(w), w_f16(w.size());
    std::transform(w.begin(), w.end(), w_f16.begin(), F32ToF16);
    for (const TensorView host_w : {MakeView(w_bf16.data(), DType::kBF16, n, k), View(w, n, k),
                                    MakeView(w_f16.data(), DType::kF16, n, k)}) {
      std::vector<float> cpu_out(t * n);
      cpu_.MatMul(View(x, t, k), host_w, View(cpu_out, t, n));
      Tensor dx = ToDevice(x, t, k);
      Tensor dy = Poisoned(t, n + 3, DType::kBF16);
      cuda_->MatMul(dx.view(), cuda_->AdoptWeight(host_w), dy.view().Cols(0, n));
      ASSERT_FALSE(cuda_->TakeFailure().failed());
      ExpectClose(ToHost(dy.view().Cols(0, n)), cpu_out, kMatMulTolerance + kBf16OutputTolerance,
                  std::string(DTypeName(host_w.dtype)) + " weight");
      for (const float extra : ToHost(dy.view().Cols(n, 3))) ASSERT_TRUE(std::isnan(extra));
    }
  }
  const int64_t t = 3, k = 264;
  std::vector<float> x = RandomVector(t * k, 40);
  std::vector<uint16_t> w1 = ToBF16(RandomVector(64 * k, 41)), w2 = ToBF16(RandomVector(40 * k, 42));
  const TensorView host_w1 = MakeView(w1.data(), DType::kBF16, 64, k);
  const TensorView host_w2 = MakeView(w2.data(), DType::kBF16, 40, k);
  std::vector<float> cpu1(t * 64), cpu2(t * 40);
  cpu_.MatMul(View(x, t, k), host_w1, View(cpu1, t, 64));
  cpu_.MatMul(View(x, t, k), host_w2, View(cpu2, t, 40));
  Tensor dx = ToDevice(x, t, k), y1 = Poisoned(t, 64, DType::kBF16), y2 = Poisoned(t, 40, DType::kBF16);
  const std::array<MatMulProduct, 2> together = {
      {{dx.view(), cuda_->AdoptWeight(host_w1), y1.view()}, {dx.view(), cuda_->AdoptWeight(host_w2), y2.view()}}};
  cuda_->MatMuls(together);
  ASSERT_FALSE(cuda_->TakeFailure().failed());
  ExpectClose(ToHost(y1.view()), cpu1, kFp32Tolerance + kBf16OutputTolerance, "first of two products");
  ExpectClose(ToHost(y2.view()), cpu2, kFp32Tolerance + kBf16OutputTolerance, "second of two products");
}

// Products issued together (a layer's projections of one input, and of two inputs) give each
// product what MatMul gives it alone, in one skinny launch where every product has the same row
// count (at most 8; the launch's rows may split reductions differently, so to fp32 summation
// order), and one by one otherwise (9 rows, mixed row counts: the same bits).
TEST_F(CudaVsCpu, MatMulsGiveEachProductWhatMatMulGives) {
  std::string why;
  cuda_ = CudaBackend::Create({.skinny_matmul_max_rows = 8}, &why);
  ASSERT_NE(cuda_, nullptr) << why;
  for (const int64_t t : {int64_t{1}, int64_t{3}, int64_t{8}, int64_t{9}}) {
    const int64_t k = 264;
    Tensor x1 = ToDevice(RandomVector(t * k, 30 + t), t, k);
    Tensor x2 = ToDevice(RandomVector(t * 16, 40 + t), t, 16);
    std::vector<std::tuple<TensorView, int64_t>> weights;  // weight and its input's width
    std::vector<std::vector<uint16_t>> host;
    for (const auto& [n, width] : {std::pair<int64_t, int64_t>{203, k}, {5, k}, {64, 16}, {1, k}, {130, 16}}) {
      host.push_back(ToBF16(RandomVector(n * width, 50 + n)));
      weights.emplace_back(cuda_->AdoptWeight(MakeView(host.back().data(), DType::kBF16, n, width)), width);
    }
    std::vector<Tensor> together, alone;
    std::vector<MatMulProduct> products;
    for (const auto& [w, width] : weights) {
      const TensorView x = width == k ? x1.view() : x2.view();
      together.push_back(Poisoned(t, w.rows));
      alone.push_back(Poisoned(t, w.rows));
      products.push_back({x, w, together.back().view()});
      cuda_->MatMul(x, w, alone.back().view());
    }
    cuda_->MatMuls(products);
    for (size_t i = 0; i < products.size(); ++i) {
      ExpectClose(ToHost(together[i].view()), ToHost(alone[i].view()), kFp32Tolerance,
                  std::to_string(t) + " rows, product " + std::to_string(i));
    }
  }
  // Row counts that differ: one by one.
  Tensor x1 = ToDevice(RandomVector(2 * 8, 60), 2, 8), x2 = ToDevice(RandomVector(3 * 8, 61), 3, 8);
  std::vector<uint16_t> host_w = ToBF16(RandomVector(4 * 8, 62));
  const TensorView w = cuda_->AdoptWeight(MakeView(host_w.data(), DType::kBF16, 4, 8));
  Tensor y1 = Poisoned(2, 4), y2 = Poisoned(3, 4), want1 = Poisoned(2, 4), want2 = Poisoned(3, 4);
  cuda_->MatMul(x1.view(), w, want1.view());
  cuda_->MatMul(x2.view(), w, want2.view());
  const std::vector<MatMulProduct> mixed = {{x1.view(), w, y1.view()}, {x2.view(), w, y2.view()}};
  cuda_->MatMuls(mixed);
  EXPECT_EQ(ToHost(y1.view()), ToHost(want1.view()));
  EXPECT_EQ(ToHost(y2.view()), ToHost(want2.view()));
}

// x rounded once for several products gives each product the bits MatMul gives it from fp32 x
// (which rounds x itself); decode-sized rows and fp32 weights read x as it is.
TEST_F(CudaVsCpu, ProductsOfOneRoundedInputGiveWhatMatMulGives) {
  std::string why;
  cuda_ = CudaBackend::Create({.skinny_matmul_max_rows = 8}, &why);
  ASSERT_NE(cuda_, nullptr) << why;
  const int64_t k = 264;
  std::vector<uint16_t> host_bf16 = ToBF16(RandomVector(70 * k, 80));
  std::vector<float> host_f32 = RandomVector(3 * k, 81);
  const TensorView w = cuda_->AdoptWeight(MakeView(host_bf16.data(), DType::kBF16, 70, k));
  const TensorView w_f32 = cuda_->AdoptWeight(MakeView(host_f32.data(), DType::kF32, 3, k));
  for (const int64_t t : {int64_t{8}, int64_t{9}, int64_t{300}}) {
    Tensor x = ToDevice(RandomVector(t * k, 90 + t), t, k);
    const ProductInput shared = cuda_->PrepareProductInput(x.view(), w);
    EXPECT_EQ(shared.rounded.empty(), t <= 8) << t << " rows";
    EXPECT_EQ(shared.For(w_f32).data, x.view().data) << "an fp32 weight reads x itself";
    for (const TensorView weight : {w, w_f32}) {
      Tensor want = Poisoned(t, weight.rows), got = Poisoned(t, weight.rows);
      cuda_->MatMul(x.view(), weight, want.view());
      cuda_->MatMul(shared.For(weight), weight, got.view());
      EXPECT_EQ(ToHost(got.view()), ToHost(want.view())) << t << " rows, " << weight.rows << " outputs";
    }
    if (t > 8) {
      // A bf16 x inside wider rows (its row stride past its columns) reads as the packed one.
      Tensor wide_rows = ToDevice(RandomVector(t * (k + 8), 95), t, k + 8, DType::kBF16);
      const TensorView strided = wide_rows.view().Cols(8, k);
      cuda_->Copy(shared.rounded.view(), strided);
      Tensor want = Poisoned(t, w.rows), got = Poisoned(t, w.rows);
      cuda_->MatMul(shared.rounded.view(), w, want.view());
      cuda_->MatMul(strided, w, got.view());
      EXPECT_EQ(ToHost(got.view()), ToHost(want.view())) << t << " rows of a strided bf16 x";
    }
  }
  EXPECT_FALSE(cuda_->TakeFailure().failed());
  // A rounded x with a weight of another type is refused, not misread.
  Tensor x = ToDevice(RandomVector(16 * k, 99), 16, k);
  const ProductInput shared = cuda_->PrepareProductInput(x.view(), w);
  Tensor y = Poisoned(16, 3);
  cuda_->MatMul(shared.rounded.view(), w_f32, y.view());
  EXPECT_TRUE(cuda_->TakeFailure().failed());
}

// A weight of more bytes than skinny_matmul_max_weight_bytes takes cuBLAS even at one row (the
// same bits as a backend that never takes the skinny kernel); at the limit, the skinny kernel
// (the same bits as a backend without a limit). And a MatMuls call that holds one such product
// runs each product where MatMul would.
TEST_F(CudaVsCpu, SkinnyKernelOnlyForWeightsUpToTheLimit) {
  const int64_t t = 1, k = 264, n = 130;
  const int64_t weight_bytes = n * k * 2;
  std::vector<float> x = RandomVector(t * k, 80);
  std::vector<uint16_t> host_w = ToBF16(RandomVector(n * k, 81));
  std::vector<uint16_t> host_small = ToBF16(RandomVector(8 * k, 82));
  std::vector<float> cpu_out(t * n), cpu_small(t * 8);
  cpu_.MatMul(View(x, t, k), MakeView(host_w.data(), DType::kBF16, n, k), View(cpu_out, t, n));
  cpu_.MatMul(View(x, t, k), MakeView(host_small.data(), DType::kBF16, 8, k), View(cpu_small, t, 8));
  // The product of each backend alone, then beside a small one in one MatMuls call (both outputs).
  struct Outputs {
    std::vector<float> alone, together, small;
  };
  const auto run = [&](const CudaBackendOptions& options) {
    std::string why;
    cuda_ = CudaBackend::Create(options, &why);
    EXPECT_NE(cuda_, nullptr) << why;
    if (cuda_ == nullptr) return Outputs{};
    const TensorView w = cuda_->AdoptWeight(MakeView(host_w.data(), DType::kBF16, n, k));
    const TensorView small = cuda_->AdoptWeight(MakeView(host_small.data(), DType::kBF16, 8, k));
    Tensor dx = ToDevice(x, t, k);
    Tensor alone = Poisoned(t, n), together = Poisoned(t, n), beside = Poisoned(t, 8);
    cuda_->MatMul(dx.view(), w, alone.view());
    const std::vector<MatMulProduct> products = {{dx.view(), w, together.view()}, {dx.view(), small, beside.view()}};
    cuda_->MatMuls(products);
    return Outputs{ToHost(alone.view()), ToHost(together.view()), ToHost(beside.view())};
  };
  const auto blas = run({.skinny_matmul_max_rows = 0});
  const auto skinny = run({.skinny_matmul_max_weight_bytes = 0});
  const auto over = run({.skinny_matmul_max_weight_bytes = weight_bytes - 1});
  const auto at = run({.skinny_matmul_max_weight_bytes = weight_bytes});
  ExpectClose(blas.alone, cpu_out, kMatMulTolerance, "cuBLAS");
  ExpectClose(skinny.alone, cpu_out, kFp32Tolerance, "skinny");
  EXPECT_NE(blas.alone, skinny.alone) << "the two paths should round differently";
  EXPECT_EQ(over.alone, blas.alone);
  EXPECT_EQ(over.together, blas.alone);
  EXPECT_EQ(at.alone, skinny.alone);
  // Beside the small product: over the limit each goes its own way (the small one still skinny,
  // fp32-exact), at the limit both share one skinny launch (to fp32 summation order).
  ExpectClose(over.small, cpu_small, kFp32Tolerance, "small product beside one over the limit");
  ExpectClose(at.together, cpu_out, kFp32Tolerance, "at the limit, in one launch");
  ExpectClose(at.small, cpu_small, kFp32Tolerance, "small product in one launch");
  std::string why;
  EXPECT_EQ(CudaBackend::Create({.skinny_matmul_max_weight_bytes = -1}, &why), nullptr);
  EXPECT_NE(why.find("skinny_matmul_max_weight_bytes"), std::string::npos) << why;
}

// Skinny products launched as programmatic dependents start before the kernel ahead of them ends;
// they must still read what it wrote. A chain in which each product reads the residual the add
// before it has just changed, and whose next add reads the product: the same bits as plain
// launches.
TEST_F(CudaVsCpu, ProgrammaticProductsReadWhatTheKernelBeforeWrote) {
  // At 1 row the warps load their first four slices into registers before the wait: 4,608 columns
  // give them 4 or 5 slices each (4 warps a row).
  for (const auto& [t, k] : {std::pair<int64_t, int64_t>{1, 4608}, {2, 2304}}) {
    const int64_t n = k;
    std::vector<uint16_t> host_w = ToBF16(RandomVector(n * k, 70));
    std::vector<float> norm = RandomVector(k, 71);
    std::vector<std::vector<float>> results;
    for (const bool programmatic : {true, false}) {
      std::string why;
      cuda_ = CudaBackend::Create({.programmatic_products = programmatic}, &why);
      ASSERT_NE(cuda_, nullptr) << why;
      const TensorView w = cuda_->AdoptWeight(MakeView(host_w.data(), DType::kBF16, n, k));
      const TensorView norm_w = cuda_->AdoptWeight(View(norm, 1, k));
      Tensor residual = ToDevice(RandomVector(t * k, 72), t, k);
      Tensor normed = Poisoned(t, k), product = ToDevice(RandomVector(t * n, 73), t, n);
      for (int i = 0; i < 20; ++i) {
        cuda_->AddRmsNorm(residual.view(), product.view(), norm_w, 1e-6f, normed.view());
        cuda_->MatMul(normed.view(), w, product.view());
      }
      results.push_back(ToHost(product.view()));
    }
    EXPECT_EQ(results[0], results[1]) << t << " rows";
  }
}

// States leave the steps' buffers the room those have held at once: a state that would cut into
// it is refused as out of memory, so states run out before a step does.
TEST_F(CudaVsCpu, AStateLeavesTheStepsBuffersTheRoomTheyHaveHeld) {
  std::string why;
  cuda_ = CudaBackend::Create({.memory_limit_bytes = int64_t{64} << 20}, &why);
  ASSERT_NE(cuda_, nullptr) << why;
  constexpr int64_t kMiB = int64_t{1} << 20;
  Tensor state_before_any_step = cuda_->AllocateState(1, 8 * kMiB / 4, DType::kF32);  // nothing to leave yet
  EXPECT_FALSE(state_before_any_step.empty());
  state_before_any_step = Tensor();
  {
    Tensor step_a = cuda_->Allocate(1, 30 * kMiB / 4, DType::kF32);
    Tensor step_b = cuda_->Allocate(1, 10 * kMiB / 4, DType::kF32);  // 40 MiB held at once
    ASSERT_FALSE(step_a.empty() || step_b.empty());
  }
  EXPECT_FALSE(cuda_->TakeFailure().failed());  // the step ran: its 40 MiB count
  Tensor too_big = cuda_->AllocateState(1, 30 * kMiB / 4, DType::kF32);  // would leave 34 MiB
  EXPECT_TRUE(too_big.empty());
  BackendFailure failure = cuda_->TakeFailure();
  EXPECT_TRUE(failure.out_of_memory);
  EXPECT_NE(failure.message.find("steps' buffers"), std::string::npos) << failure.message;
  too_big = cuda_->AllocateState(1, 30 * kMiB / 4, DType::kF32, /*leave_step_room=*/false);
  EXPECT_FALSE(too_big.empty()) << "a sequence alone may take the steps' room";
  too_big = Tensor();
  Tensor state = cuda_->AllocateState(1, 20 * kMiB / 4, DType::kF32);  // leaves 44 MiB
  ASSERT_FALSE(state.empty());
  Tensor step = cuda_->Allocate(1, 40 * kMiB / 4, DType::kF32);
  EXPECT_FALSE(step.empty()) << "the room the state left is the step's";
  EXPECT_FALSE(cuda_->TakeFailure().failed());

  // A step buffer refused where it would fit with fewer states counts its need: the next state
  // leaves room for it.
  step = Tensor();
  EXPECT_FALSE(cuda_->TakeFailure().failed());
  Tensor refused = cuda_->Allocate(1, 50 * kMiB / 4, DType::kF32);  // 20 + 50 past 64 MiB
  EXPECT_TRUE(refused.empty());
  EXPECT_TRUE(cuda_->TakeFailure().out_of_memory);
  EXPECT_TRUE(cuda_->AllocateState(1, 1 * kMiB / 4, DType::kF32).empty()) << "20 + 1 + 50 > 64 MiB";
  EXPECT_TRUE(cuda_->TakeFailure().out_of_memory);
}

// A refused call does not end the process: the backend holds the failure, skips the calling
// thread's operations (allocations come back empty) until it is taken, then works as before.
TEST_F(CudaVsCpu, AFailureIsHeldUntilTakenAndTheBackendKeepsWorking) {
  std::string why;
  cuda_ = CudaBackend::Create({.memory_limit_bytes = int64_t{1} << 20}, &why);
  ASSERT_NE(cuda_, nullptr) << why;
  Tensor huge = cuda_->Allocate(1024, 1024, DType::kF32);  // 4 MiB past a 1 MiB limit
  EXPECT_TRUE(huge.empty());
  Tensor small = cuda_->Allocate(4, 4, DType::kF32);
  EXPECT_TRUE(small.empty()) << "allocations after a failure are skipped";
  BackendFailure failure = cuda_->TakeFailure();
  EXPECT_TRUE(failure.out_of_memory);
  EXPECT_NE(failure.message.find("memory limit"), std::string::npos) << failure.message;
  EXPECT_FALSE(cuda_->TakeFailure().failed()) << "a failure is reported once";

  // A launch its launcher refuses (top-k past the kernel's 16).
  Tensor logits = ToDevice(RandomVector(2 * 32, 3), 2, 32);
  Tensor ids = cuda_->Allocate(2, 17, DType::kI32);
  Tensor weights = cuda_->Allocate(2, 17, DType::kF32);
  cuda_->MoeRoute(logits.view(), TensorView{}, MoeRouting{17, 1, 1, true, 1.0f, false}, ids.view(), weights.view());
  failure = cuda_->TakeFailure();
  EXPECT_FALSE(failure.out_of_memory);
  EXPECT_NE(failure.message.find("moe route"), std::string::npos) << failure.message;

  // Work as usual afterwards.
  std::vector<float> x = RandomVector(3 * 64, 4);
  std::vector<uint16_t> w = ToBF16(RandomVector(40 * 64, 5));
  const TensorView host_w = MakeView(w.data(), DType::kBF16, 40, 64);
  std::vector<float> cpu_out(3 * 40);
  cpu_.MatMul(View(x, 3, 64), host_w, View(cpu_out, 3, 40));
  Tensor dx = ToDevice(x, 3, 64);
  Tensor dy = Poisoned(3, 40);
  cuda_->MatMul(dx.view(), cuda_->AdoptWeight(host_w), dy.view());
  ExpectClose(ToHost(dy.view()), cpu_out, kFp32Tolerance, "matmul after the failures");
  EXPECT_FALSE(cuda_->TakeFailure().failed());
}

// Widths of a few hundred columns: the element kernels' second block of a row is partly past it.
TEST_F(CudaVsCpu, ElementwiseAndNorms) {
  const int64_t t = 37, d = 288, heads = 9, head_dim = 32;
  std::vector<float> a = RandomVector(t * d, 1), b = RandomVector(t * d, 2);
  std::vector<uint16_t> w = ToBF16(RandomVector(d, 3)), w_head = ToBF16(RandomVector(head_dim, 4));
  const TensorView w_view = MakeView(w.data(), DType::kBF16, 1, d);
  const TensorView w_head_view = MakeView(w_head.data(), DType::kBF16, 1, head_dim);
  Tensor da = ToDevice(a, t, d), db = ToDevice(b, t, d);

  std::vector<float> cpu_out(t * d);
  cpu_.RmsNorm(View(a, t, d), w_view, 1e-5f, View(cpu_out, t, d));
  Tensor out = Poisoned(t, d);
  cuda_->RmsNorm(da.view(), cuda_->AdoptWeight(w_view), 1e-5f, out.view());
  ExpectClose(ToHost(out.view()), cpu_out, kFp32Tolerance, "rmsnorm");

  // On strided columns, in place.
  std::vector<float> cpu_cols = a;
  cpu_.RmsNorm(View(cpu_cols, t, d).Cols(0, head_dim), w_head_view, 1e-6f,
               View(cpu_cols, t, d).Cols(0, head_dim));
  Tensor cols = ToDevice(a, t, d);
  cuda_->RmsNorm(cols.view().Cols(0, head_dim), cuda_->AdoptWeight(w_head_view), 1e-6f,
                 cols.view().Cols(0, head_dim));
  ExpectClose(ToHost(cols.view()), cpu_cols, kFp32Tolerance, "rmsnorm on columns, in place");

  cpu_.GatedRmsNorm(View(a, t, d), View(b, t, d), w_head_view, head_dim, 1e-5f, View(cpu_out, t, d));
  out = Poisoned(t, d);
  cuda_->GatedRmsNorm(da.view(), db.view(), cuda_->AdoptWeight(w_head_view), head_dim, 1e-5f, out.view());
  ExpectClose(ToHost(out.view()), cpu_out, kFp32Tolerance, "gated rmsnorm");
  ASSERT_EQ(heads * head_dim, d);
  // The KDA read and output gate in bf16 (prefill on the GPU): the CPU gets the rounded values.
  {
    std::vector<float> a16 = RoundedToBF16(a), b16 = RoundedToBF16(b);
    cpu_.GatedRmsNorm(View(a16, t, d), View(b16, t, d), w_head_view, head_dim, 1e-5f, View(cpu_out, t, d));
    Tensor x16 = ToDevice(a, t, d, DType::kBF16), gate16 = ToDevice(b, t, d, DType::kBF16);
    out = Poisoned(t, d);
    cuda_->GatedRmsNorm(x16.view(), gate16.view(), cuda_->AdoptWeight(w_head_view), head_dim, 1e-5f, out.view());
    ExpectClose(ToHost(out.view()), cpu_out, kFp32Tolerance, "gated rmsnorm of bf16 inputs");
  }
  // Heads of 128 (the model's: four elements a lane), fp32 and bf16 in and out; a bf16 output
  // holds the fp32 output's rounding (what o_proj reads either way).
  {
    const int64_t wide_head = 128;
    std::vector<uint16_t> w128 = ToBF16(RandomVector(wide_head, 5));
    const TensorView w128_view = MakeView(w128.data(), DType::kBF16, 1, wide_head);
    const TensorView w128_device = cuda_->AdoptWeight(w128_view);
    const int64_t wide = 3 * wide_head;
    std::vector<float> x = RandomVector(t * wide, 6), z = RandomVector(t * wide, 7), want(t * wide);
    cpu_.GatedRmsNorm(View(x, t, wide), View(z, t, wide), w128_view, wide_head, 1e-5f, View(want, t, wide));
    Tensor dx = ToDevice(x, t, wide), dz = ToDevice(z, t, wide);
    Tensor wide_out = Poisoned(t, wide), narrow_out = Poisoned(t, wide, DType::kBF16);
    cuda_->GatedRmsNorm(dx.view(), dz.view(), w128_device, wide_head, 1e-5f, wide_out.view());
    cuda_->GatedRmsNorm(dx.view(), dz.view(), w128_device, wide_head, 1e-5f, narrow_out.view());
    const std::vector<float> got = ToHost(wide_out.view());
    ExpectClose(got, want, kFp32Tolerance, "gated rmsnorm, heads of 128");
    EXPECT_EQ(ToHost(narrow_out.view()), RoundedToBF16(got)) << "bf16 output, heads of 128";
    // bf16 x and gate (the model's prefill: the KDA read and the output gate's logits) into bf16.
    std::vector<float> x16 = RoundedToBF16(x), z16 = RoundedToBF16(z);
    cpu_.GatedRmsNorm(View(x16, t, wide), View(z16, t, wide), w128_view, wide_head, 1e-5f, View(want, t, wide));
    Tensor dx16 = ToDevice(x, t, wide, DType::kBF16), dz16 = ToDevice(z, t, wide, DType::kBF16);
    cuda_->GatedRmsNorm(dx16.view(), dz16.view(), w128_device, wide_head, 1e-5f, wide_out.view());
    cuda_->GatedRmsNorm(dx16.view(), dz16.view(), w128_device, wide_head, 1e-5f, narrow_out.view());
    const std::vector<float> got16 = ToHost(wide_out.view());
    ExpectClose(got16, want, kFp32Tolerance, "gated rmsnorm of bf16 inputs, heads of 128");
    EXPECT_EQ(ToHost(narrow_out.view()), RoundedToBF16(got16)) << "bf16 in and out, heads of 128";
    // Heads of 32 take the element-by-element kernel, bf16 output too.
    Tensor narrow32 = Poisoned(t, d, DType::kBF16), wide32 = Poisoned(t, d);
    const TensorView w_head_device = cuda_->AdoptWeight(w_head_view);
    cuda_->GatedRmsNorm(da.view(), db.view(), w_head_device, head_dim, 1e-5f, wide32.view());
    cuda_->GatedRmsNorm(da.view(), db.view(), w_head_device, head_dim, 1e-5f, narrow32.view());
    EXPECT_EQ(ToHost(narrow32.view()), RoundedToBF16(ToHost(wide32.view()))) << "bf16 output, heads of 32";
    EXPECT_FALSE(cuda_->TakeFailure().failed());
  }

  cpu_.SwiGlu(View(a, t, d), View(b, t, d), View(cpu_out, t, d));
  out = Poisoned(t, d);
  cuda_->SwiGlu(da.view(), db.view(), out.view());
  ExpectClose(ToHost(out.view()), cpu_out, kFp32Tolerance, "swiglu");

  std::vector<float> cpu_sum = a;
  cpu_.Add(View(cpu_sum, t, d), View(b, t, d));
  Tensor sum = ToDevice(a, t, d);
  cuda_->Add(sum.view(), db.view());
  ExpectClose(ToHost(sum.view()), cpu_sum, kFp32Tolerance, "add");

  // The fused residual add and norm: the bits of Add then RmsNorm on the GPU, the CPU's values.
  // Width 2304 (the 48B hidden size): more columns than threads per row; 5000: more than a
  // block holds in registers (the strided loops).
  for (const int64_t width : {d, int64_t{2304}, int64_t{5000}}) {
    std::vector<float> acc = RandomVector(t * width, 6), x = RandomVector(t * width, 7);
    std::vector<uint16_t> norm = ToBF16(RandomVector(width, 8));
    const TensorView norm_view = cuda_->AdoptWeight(MakeView(norm.data(), DType::kBF16, 1, width));
    Tensor fused_acc = ToDevice(acc, t, width), split_acc = ToDevice(acc, t, width), dx = ToDevice(x, t, width);
    Tensor narrow_acc = ToDevice(acc, t, width);  // before the CPU's AddRmsNorm adds x to acc
    Tensor fused = Poisoned(t, width), split = Poisoned(t, width);
    cuda_->AddRmsNorm(fused_acc.view(), dx.view(), norm_view, 1e-6f, fused.view());
    cuda_->Add(split_acc.view(), dx.view());
    cuda_->RmsNorm(split_acc.view(), norm_view, 1e-6f, split.view());
    EXPECT_EQ(ToHost(fused_acc.view()), ToHost(split_acc.view())) << "add rmsnorm: the sum, width " << width;
    EXPECT_EQ(ToHost(fused.view()), ToHost(split.view())) << "add rmsnorm: the norm, width " << width;
    std::vector<float> cpu_norm(t * width);
    cpu_.AddRmsNorm(View(acc, t, width), View(x, t, width), MakeView(norm.data(), DType::kBF16, 1, width), 1e-6f,
                    View(cpu_norm, t, width));
    ExpectClose(ToHost(fused.view()), cpu_norm, kFp32Tolerance, "add rmsnorm against the cpu");
    // Written in bf16 (a mixer's input at prefill sizes): the fp32 output's rounding, the same
    // residual sum.
    Tensor narrow = Poisoned(t, width, DType::kBF16);
    cuda_->AddRmsNorm(narrow_acc.view(), dx.view(), norm_view, 1e-6f, narrow.view());
    const std::vector<float> rounded = RoundedToBF16(ToHost(fused.view()));
    EXPECT_EQ(ToHost(narrow.view()), rounded) << "add rmsnorm into bf16, width " << width;
    EXPECT_EQ(ToHost(narrow_acc.view()), ToHost(fused_acc.view())) << "add rmsnorm into bf16: the sum";
    narrow = Poisoned(t, width, DType::kBF16);
    cuda_->RmsNorm(split_acc.view(), norm_view, 1e-6f, narrow.view());
    EXPECT_EQ(ToHost(narrow.view()), rounded) << "rmsnorm into bf16, width " << width;
  }

  std::vector<uint16_t> table = ToBF16(RandomVector(50 * d, 5));
  const TensorView table_view = MakeView(table.data(), DType::kBF16, 50, d);
  const std::vector<int32_t> ids = {3, 0, 49, 3, 17};
  std::vector<float> cpu_embed(ids.size() * d);
  cpu_.Embed(ids, table_view, View(cpu_embed, 5, d));
  out = Poisoned(5, d);
  cuda_->Embed(ids, cuda_->AdoptWeight(table_view), out.view());
  ExpectClose(ToHost(out.view()), cpu_embed, 0, "embed");

  const std::vector<int64_t> rows = {36, 0, 5};
  std::vector<float> cpu_gather(3 * d);
  cpu_.GatherRows(View(a, t, d), rows, View(cpu_gather, 3, d));
  out = Poisoned(3, d);
  cuda_->GatherRows(da.view(), rows, out.view());
  ExpectClose(ToHost(out.view()), cpu_gather, 0, "gather");
}

// Sequences shorter than the tail, and longer than a thread's run of 16 outputs; kernels of 4
// (the model's) and 6; outputs in fp32 and in bf16 (the GPU's KDA activations).
// At 4 taps a thread takes four channels (16-byte loads) where the channels are a multiple of
// four, one otherwise; tails one float off 16-byte alignment are read element by element.
TEST_F(CudaVsCpu, CausalConvWithTailsAndContinuation) {
  struct Case {
    int64_t kernel;
    DType out_dtype;
    int64_t channels;
    bool unaligned_tails;
  };
  for (const Case& c : {Case{4, DType::kF32, 300, false}, Case{6, DType::kF32, 300, false},
                        Case{4, DType::kBF16, 300, false}, Case{4, DType::kF32, 302, false},
                        Case{4, DType::kBF16, 300, true}}) {
    const auto [kernel, out_dtype, channels, unaligned_tails] = c;
    SCOPED_TRACE(::testing::Message() << kernel << " taps, " << DTypeName(out_dtype) << ", " << channels
                                      << " channels" << (unaligned_tails ? ", unaligned tails" : ""));
    const std::vector<int64_t> lengths = {1, 9, 2, 40, 113};
    const int64_t t = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
    std::vector<float> x = RandomVector(t * channels, 1);
    std::vector<uint16_t> w = ToBF16(RandomVector(channels * kernel, 2));
    const TensorView w_view = MakeView(w.data(), DType::kBF16, channels, kernel);
    const TensorView w_device = cuda_->AdoptWeight(w_view);
    Tensor dx = ToDevice(x, t, channels);
    std::vector<std::vector<float>> cpu_tails;
    std::vector<Tensor> gpu_tails;
    for (size_t i = 0; i < lengths.size(); ++i) {
      cpu_tails.push_back(RandomVector((kernel - 1) * channels, 10 + i));
      std::vector<float> stored = cpu_tails.back();
      if (unaligned_tails) stored.insert(stored.begin(), NAN);
      gpu_tails.push_back(ToDevice(stored, 1, static_cast<int64_t>(stored.size())));
    }
    // A tail as the backend sees it: one float in where the tails are unaligned.
    const auto tail_of = [&](size_t i) { return gpu_tails[i].data<float>() + (unaligned_tails ? 1 : 0); };
    // Two steps over the same inputs: the second continues from the tails the first left.
    for (int step = 0; step < 2; ++step) {
      std::vector<ConvSequence> cpu_seqs, gpu_seqs;
      int64_t begin = 0;
      for (size_t i = 0; i < lengths.size(); ++i) {
        cpu_seqs.push_back({{begin, lengths[i]}, cpu_tails[i].data()});
        gpu_seqs.push_back({{begin, lengths[i]}, tail_of(i)});
        begin += lengths[i];
      }
      std::vector<float> cpu_out(t * channels);
      cpu_.CausalConvSilu(View(x, t, channels), w_view, cpu_seqs, View(cpu_out, t, channels));
      Tensor out = Poisoned(t, channels, out_dtype);
      cuda_->CausalConvSilu(dx.view(), w_device, gpu_seqs, out.view());
      ExpectClose(ToHost(out.view()), cpu_out, out_dtype == DType::kBF16 ? kBf16OutputTolerance : kFp32Tolerance,
                  "conv output");
      for (size_t i = 0; i < lengths.size(); ++i) {
        std::vector<float> tail = ToHost(gpu_tails[i].view());
        if (unaligned_tails) tail.erase(tail.begin());
        ExpectClose(tail, cpu_tails[i], 0, "conv tail");
      }
    }
  }
}

struct KdaShape {
  int64_t heads, d;
  std::vector<int64_t> lengths;
  float dt_bias_mean;  // larger: stronger decay
};

class CudaKda : public CudaVsCpu, public ::testing::WithParamInterface<KdaShape> {
 protected:
  void CompareDecodeStep(int64_t kernel);
};

// Runs one KDA call on both backends from the same random inputs and initial states. With
// `force_recurrent` the GPU gets every sequence as kRecurrent (its fused recurrent kernel; the CPU
// computes the chunked form where asked, the same math), otherwise as the CPU: length > 1 chunked.
// With `unaligned_inputs` the GPU reads q, k, v and the gate logits one element into wider rows
// (no 16-byte loads). With `activations` BF16 the GPU's q, k, v, gate logits and output are bf16
// (the CPU gets the rounded inputs).
void CompareKda(CudaVsCpu& test, CudaBackend& cuda, cpu::CpuBackend& cpu, const KdaShape& s,
                bool force_recurrent, double tolerance, bool unaligned_inputs = false,
                DType activations = DType::kF32) {
  const int64_t t = std::accumulate(s.lengths.begin(), s.lengths.end(), int64_t{0});
  const int64_t width = s.heads * s.d;
  std::vector<float> q = RandomVector(t * width, 1), k = RandomVector(t * width, 2),
                     v = RandomVector(t * width, 3), f = RandomVector(t * width, 4, 2.0f),
                     beta = RandomVector(t * s.heads, 5), a_log = RandomVector(s.heads, 6),
                     dt = RandomVector(width, 7, 3.0f);
  if (activations == DType::kBF16) {
    for (std::vector<float>* x : {&q, &k, &v, &f}) *x = RoundedToBF16(*x);
  }
  for (float& x : a_log) x = std::log(1.0f + 15.0f * std::fabs(std::tanh(x)));
  for (float& x : dt) x += s.dt_bias_mean;
  const int64_t shift = unaligned_inputs ? 1 : 0;
  auto shifted = [&](const std::vector<float>& x) {
    std::vector<float> wide(t * (width + shift), 0.0f);
    for (int64_t r = 0; r < t; ++r) {
      std::copy_n(x.begin() + r * width, width, wide.begin() + r * (width + shift) + shift);
    }
    return test.ToDevice(wide, t, width + shift, activations);
  };
  Tensor dq = shifted(q), dk = shifted(k), dv = shifted(v), df = shifted(f),
         dbeta = test.ToDevice(beta, t, s.heads);
  const KdaInputs cpu_in{s.heads, s.d, View(q, t, width), View(k, t, width), View(v, t, width),
                         View(f, t, width), View(beta, t, s.heads), View(a_log, 1, s.heads), View(dt, 1, width)};
  const KdaInputs gpu_in{s.heads, s.d, dq.view().Cols(shift, width), dk.view().Cols(shift, width),
                         dv.view().Cols(shift, width), df.view().Cols(shift, width), dbeta.view(),
                         cuda.AdoptWeight(View(a_log, 1, s.heads)), cuda.AdoptWeight(View(dt, 1, width))};
  std::vector<std::vector<float>> cpu_states;
  std::vector<Tensor> gpu_states;
  std::vector<KdaSequence> cpu_seqs, gpu_seqs;
  int64_t begin = 0;
  for (size_t i = 0; i < s.lengths.size(); ++i) {
    cpu_states.push_back(RandomVector(s.heads * s.d * s.d, 20 + i, 0.1f));
    gpu_states.push_back(test.ToDevice(cpu_states.back(), s.heads, s.d * s.d));
    const KdaAlgorithm algorithm = s.lengths[i] == 1 ? KdaAlgorithm::kRecurrent : KdaAlgorithm::kChunked;
    cpu_seqs.push_back({{begin, s.lengths[i]}, algorithm, cpu_states.back().data()});
    gpu_seqs.push_back({{begin, s.lengths[i]}, force_recurrent ? KdaAlgorithm::kRecurrent : algorithm,
                        gpu_states.back().data<float>()});
    begin += s.lengths[i];
  }
  std::vector<float> cpu_out(t * width);
  cpu.KdaAttention(cpu_in, cpu_seqs, View(cpu_out, t, width));
  Tensor out = test.Poisoned(t, width, activations);
  cuda.KdaAttention(gpu_in, gpu_seqs, out.view());
  const std::vector<float> gpu_out = test.ToHost(out.view());
  double scale = 1e-6, worst = 0;
  for (size_t i = 0; i < cpu_out.size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::fabs(cpu_out[i])));
    worst = std::max(worst, static_cast<double>(std::fabs(gpu_out[i] - cpu_out[i])));
  }
  std::printf("kda output: max error %.2e of the output scale\n", worst / scale);
  CudaVsCpu::ExpectClose(gpu_out, cpu_out, tolerance, "kda output");
  // The states stay fp32 whatever the activations: the recurrent kernel's within fp32's bound.
  const double state_tolerance = force_recurrent ? kFp32Tolerance : tolerance;
  for (size_t i = 0; i < s.lengths.size(); ++i) {
    CudaVsCpu::ExpectClose(test.ToHost(gpu_states[i].view()), cpu_states[i], state_tolerance, "kda state");
  }
}

TEST_P(CudaKda, FusedRecurrentMatchesTheCpu) {
  CompareKda(*this, *cuda_, cpu_, GetParam(), /*force_recurrent=*/true, kFp32Tolerance);
}

// The chunked kernels keep bf16 intermediates between fp32 accumulations (q̂, k̂, Tm, U, W, the
// decayed operands, the state's copy for the products), as FLA's chunk_kda: each rounding is
// worth 2^-9 of its operand and an output mixes a handful of them, so agreement to ~1e-2 of the
// output scale is what bf16 allows; fp32 accumulation keeps it from growing with the length
// (checked up to 2000 tokens).
constexpr double kChunkedTolerance = 2e-2;

TEST_P(CudaKda, ChunkedMatchesTheCpu) {
  CompareKda(*this, *cuda_, cpu_, GetParam(), /*force_recurrent=*/false, kChunkedTolerance);
}

TEST_P(CudaKda, ChunkedReadsUnalignedInputs) {
  CompareKda(*this, *cuda_, cpu_, GetParam(), /*force_recurrent=*/false, kChunkedTolerance,
             /*unaligned_inputs=*/true);
}

// bf16 q, k, v, gate logits and output (what the model gives the CUDA backend in prefill): the
// chunked kernels round q̂, k̂ and βv to bf16 anyway, so only the output's rounding is new.
TEST_P(CudaKda, ChunkedTakesBf16Activations) {
  CompareKda(*this, *cuda_, cpu_, GetParam(), /*force_recurrent=*/false, kChunkedTolerance,
             /*unaligned_inputs=*/false, DType::kBF16);
}

TEST_P(CudaKda, ChunkedTakesUnalignedBf16Activations) {
  CompareKda(*this, *cuda_, cpu_, GetParam(), /*force_recurrent=*/false, kChunkedTolerance,
             /*unaligned_inputs=*/true, DType::kBF16);
}

TEST_P(CudaKda, FusedRecurrentTakesBf16Activations) {
  CompareKda(*this, *cuda_, cpu_, GetParam(), /*force_recurrent=*/true, kBf16OutputTolerance,
             /*unaligned_inputs=*/false, DType::kBF16);
}

// The tensor-core absorbed attention's blocks take equal runs of the absorbed rows' key tiles,
// crossing from row to row; each (row, block) piece has its own state slot, and a row lists its
// slots. Host code, no GPU needed.
TEST(MlaKeySplit, CutsTheRowsTilesIntoEqualRuns) {
  // Packed rows (64-key tiles): 0 absorbed (160 keys: 3 tiles), 1-2 expanded, 3-4 absorbed (64
  // and 65 keys: 1 and 2 tiles), 5 absorbed (400 keys: 7 tiles). 13 tiles over 4 blocks: 3, 3, 3, 4.
  std::vector<MlaSequence> seqs(4);
  seqs[0] = {{0, 1}, MlaForm::kAbsorbed, {}, 159};
  seqs[1] = {{1, 2}, MlaForm::kExpanded, {}, 0};
  seqs[2] = {{3, 2}, MlaForm::kAbsorbed, {}, 63};
  seqs[3] = {{5, 1}, MlaForm::kAbsorbed, {}, 399};
  const MlaKeySplit split = BuildMlaKeySplit(seqs.data(), 4, 6, 4);
  ASSERT_EQ(split.blocks, 4);
  ASSERT_EQ(split.table.size(), size_t{6 * 4 + 5 * 6});
  // Blocks: {first absorbed row, first tile in it, tiles, that row again}.
  EXPECT_EQ(std::vector<int32_t>(split.table.begin(), split.table.begin() + 24),
            (std::vector<int32_t>{0, 0, 3, 0, 0, 3, 1, 0, 3, 3, 2, 1, 3, 0, 3, 5, 3, 7, 3, 3, 4, 5, 3, 7}));
  // Absorbed rows: {packed row, sequence, tiles}, room for 6.
  EXPECT_EQ(std::vector<int32_t>(split.table.begin() + 24, split.table.begin() + 42),
            (std::vector<int32_t>{0, 0, 3, 3, 2, 1, 4, 2, 2, 5, 3, 7, 0, 0, 0, 0, 0, 0}));
  // Packed rows' slots {first, count}: row r's pieces in blocks b..b' are slots r + b ...
  EXPECT_EQ(std::vector<int32_t>(split.table.begin() + 42, split.table.end()),
            (std::vector<int32_t>{0, 1, 0, 0, 0, 0, 2, 1, 3, 1, 5, 2}));
}

// Fewer tiles than blocks (a short history under the grid its key bucket gives): every slot a row
// lists belongs to a block that has a piece of that row, so the merge reads only written states.
TEST(MlaKeySplit, ListsOnlyWrittenSlotsWhenTilesAreFewerThanBlocks) {
  std::vector<MlaSequence> seqs = {{{0, 1}, MlaForm::kAbsorbed, {}, 7},
                                   {{1, 1}, MlaForm::kAbsorbed, {}, 1200},
                                   {{2, 1}, MlaForm::kAbsorbed, {}, 1}};
  const int64_t rows = 3, blocks = 64;  // 1 + 19 + 1 tiles
  const MlaKeySplit split = BuildMlaKeySplit(seqs.data(), 3, rows, blocks);
  const auto* runs = reinterpret_cast<const MlaKeySplitBlock*>(split.table.data());
  const auto* slots = reinterpret_cast<const MlaRowSlots*>(split.table.data() + MlaKeySplitSlotsAt(blocks, rows));
  int64_t tiles = 0;
  for (int64_t b = 0; b < blocks; ++b) tiles += runs[b].tiles;
  EXPECT_EQ(tiles, 21);
  for (int r = 0; r < rows; ++r) {
    SCOPED_TRACE(r);
    ASSERT_GE(slots[r].count, 1);
    for (int s = slots[r].first; s < slots[r].first + slots[r].count; ++s) {
      const MlaKeySplitBlock& run = runs[s - r];  // slot r + b
      EXPECT_GT(run.tiles, 0);
      EXPECT_LE(run.row, r);
    }
  }
  EXPECT_EQ(slots[1].count, 19);  // one tile per block
}

// The expanded attention's row tiles, longest first so that the grid's last blocks are its
// shortest: every expanded sequence's rows once, absorbed sequences none, equal key counts in
// sequence order. Host code, no GPU needed.
TEST(MlaKeySplitCount, FillsOneWaveOfIdleMultiprocessorsWithEnoughKeysPerSplit) {
  EXPECT_EQ(MlaKeySplitCount(132, 1 << 20, 132), 1) << "a full wave already";
  EXPECT_EQ(MlaKeySplitCount(64, 1 << 20, 132), 2);
  EXPECT_EQ(MlaKeySplitCount(32, 1 << 20, 132), 4);
  EXPECT_EQ(MlaKeySplitCount(1, 1 << 20, 132), 16) << "at most 16";
  EXPECT_EQ(MlaKeySplitCount(32, 3 * 16 * 64, 132), 3) << "16 key tiles a split at least";
  EXPECT_EQ(MlaKeySplitCount(32, 1000, 132), 1);
}

TEST(MlaExpandedRowTiles, ListsEveryExpandedRowTileOnceWithTheMostKeysFirst) {
  std::vector<MlaSequence> seqs = {{{0, 300}, MlaForm::kExpanded, {}, 0},
                                   {{300, 1}, MlaForm::kAbsorbed, {}, 5000},
                                   {{301, 128}, MlaForm::kExpanded, {}, 172},
                                   {{429, 100}, MlaForm::kExpanded, {}, 0}};
  const std::vector<MlaRowTile> tiles = MlaExpandedRowTiles(seqs.data(), 4, 128);
  // Keys per tile: sequence 0's rows 0, 128, 256: 128, 256, 300; sequence 2's row 0: 300; sequence
  // 3's row 0: 100.
  std::vector<std::pair<int32_t, int32_t>> listed;
  for (const MlaRowTile& t : tiles) listed.emplace_back(t.seq, t.row);
  EXPECT_EQ(listed, (std::vector<std::pair<int32_t, int32_t>>{{0, 256}, {2, 0}, {0, 128}, {0, 0}, {3, 0}}));
}

// The scan starts its blocks in the order of longest_first, so the longest chains of chunks do
// not start last; host code, no GPU needed.
TEST(KdaChunkTable, ListsTheSequencesLongestFirst) {
  std::vector<KdaSequence> seqs;
  int64_t begin = 0;
  for (const int64_t length : {65, 200, 1, 130, 193}) {  // 2, 4, 1, 3 and 4 chunks
    seqs.push_back({{begin, length}, KdaAlgorithm::kChunked, nullptr});
    begin += length;
  }
  const KdaChunkTable table = BuildKdaChunkTable(seqs.data(), static_cast<int64_t>(seqs.size()));
  EXPECT_EQ(table.first_chunk, (std::vector<int32_t>{0, 2, 6, 7, 10, 14}));
  EXPECT_EQ(table.longest_first, (std::vector<int32_t>{1, 4, 3, 0, 2}));  // ties in order
}

INSTANTIATE_TEST_SUITE_P(HeadDims, CudaKda,
                         ::testing::Values(KdaShape{2, 16, {1, 70}, 0.0f}, KdaShape{3, 24, {5, 1, 64}, -2.0f},
                                           KdaShape{2, 32, {130, 1}, 0.0f}, KdaShape{2, 64, {1, 1, 33}, 0.0f},
                                           KdaShape{2, 128, {1, 200}, 0.0f},
                                           // A decode step: one token for each of many sequences
                                           // (28 tasks: the fused decode step's split form, a
                                           // cluster of 4 blocks per task; up to 64 take it).
                                           KdaShape{4, 128, {1, 1, 1, 1, 1, 1, 1}, 0.0f},
                                           // 64 and 68 tasks: the split form's most, and the
                                           // persistent kernel with fewer tasks than blocks.
                                           KdaShape{4, 128, std::vector<int64_t>(16, 1), 0.0f},
                                           KdaShape{4, 128, std::vector<int64_t>(17, 1), 0.0f},
                                           // 640 (sequence, head) tasks: more than the fused
                                           // decode step's persistent blocks (one per SM), each
                                           // of which then cycles its ring of slots.
                                           KdaShape{4, 128, std::vector<int64_t>(160, 1), 0.0f},
                                           // 600 tasks at d = 24: each warp 3 rows (not a
                                           // multiple of 4), lanes past 6 no columns, rings cycled.
                                           KdaShape{6, 24, std::vector<int64_t>(100, 1), 0.0f},
                                           KdaShape{2, 96, {40, 1, 7}, 12.0f},
                                           // Strong decay: g around -200 per token and channel.
                                           KdaShape{2, 32, {150, 3}, 12.0f},
                                           // Chunk edges (63, 64, 65 rows), several chunks,
                                           // and long sequences.
                                           KdaShape{2, 128, {64, 65, 1, 300}, 0.0f},
                                           KdaShape{3, 48, {63, 129, 2}, 0.0f},
                                           KdaShape{1, 128, {2000}, 0.0f},
                                           KdaShape{2, 128, {700, 1, 90}, 12.0f},
                                           KdaShape{2, 64, {500}, -2.0f},
                                           // More (chunk, head) tasks than the chunked prepare
                                           // kernel's persistent blocks (one per SM), so each
                                           // block stages its next task while it finishes one:
                                           // 388 and 260 tasks of mixed lengths.
                                           KdaShape{4, 128, {6000, 65, 3}, 0.0f},
                                           KdaShape{4, 64, {4000, 100}, 12.0f},
                                           // Enough (sequence, head) pairs for the chunked
                                           // scan's 64-column slices on an H100 or H200
                                           // (ChooseScan: 208 and 120 blocks; single tokens
                                           // take the recurrent kernel), over several chunks
                                           // of mixed lengths.
                                           KdaShape{8, 128, {130, 64, 1, 200, 65, 3, 129, 90, 70, 33, 150, 5, 260, 2},
                                                    0.0f},
                                           KdaShape{10, 64, {300, 2, 64, 65, 130, 7, 90, 200, 33, 140, 2, 70}, 12.0f}),
                         [](const ::testing::TestParamInfo<KdaShape>& param) {
                           const KdaShape& s = param.param;
                           std::string name = "H" + std::to_string(s.heads) + "_d" + std::to_string(s.d);
                           if (s.lengths.size() > 8) {
                             name += "_" + std::to_string(s.lengths.size()) + "_sequences";
                           } else {
                             for (int64_t length : s.lengths) name += "_" + std::to_string(length);
                           }
                           return name + (s.dt_bias_mean > 0 ? "_strong_decay" : "");
                         });

// The fused decode step (convs, delta rule, gated RMSNorm in one kernel) against the CPU's
// composition of the separate operations (Backend::KdaDecodeStep's definition), over three
// steps that continue from the states and conv tails the previous ones left. Sequences sit in
// shuffled rows of the batch; dt_bias_mean > 0 gives strong decay.
void CudaKda::CompareDecodeStep(int64_t kernel) {
  const KdaShape& s = GetParam();
  const int64_t n = static_cast<int64_t>(s.lengths.size()), width = s.heads * s.d;
  std::vector<float> a_log = RandomVector(s.heads, 6), dt = RandomVector(width, 7, 3.0f);
  for (float& x : a_log) x = std::log(1.0f + 15.0f * std::fabs(std::tanh(x)));
  for (float& x : dt) x += s.dt_bias_mean;
  std::vector<float> norm = RandomVector(s.d, 8);
  std::vector<std::vector<uint16_t>> conv_w;
  for (int i = 0; i < 3; ++i) conv_w.push_back(ToBF16(RandomVector(width * kernel, 9 + i)));
  std::vector<std::vector<float>> cpu_states, cpu_tails;
  std::vector<Tensor> gpu_states, gpu_tails;
  for (int64_t i = 0; i < n; ++i) {
    cpu_states.push_back(RandomVector(s.heads * s.d * s.d, 20 + i, 0.2f));
    // Odd sequences' states start one float into their buffer: not 16-byte aligned.
    std::vector<float> buffer = cpu_states.back();
    if (i % 2 == 1) buffer.insert(buffer.begin(), 0.0f);
    gpu_states.push_back(ToDevice(buffer, 1, static_cast<int64_t>(buffer.size())));
    for (int c = 0; c < 3; ++c) {
      cpu_tails.push_back(RandomVector((kernel - 1) * width, 40 + 3 * i + c));
      gpu_tails.push_back(ToDevice(cpu_tails.back(), kernel - 1, width));
    }
  }
  std::vector<int64_t> rows(n);
  std::iota(rows.begin(), rows.end(), 0);
  std::reverse(rows.begin(), rows.end());
  std::vector<TensorView> conv_host, conv_device;
  for (int i = 0; i < 3; ++i) {
    conv_host.push_back(MakeView(conv_w[i].data(), DType::kBF16, width, kernel));
    conv_device.push_back(cuda_->AdoptWeight(conv_host.back()));
  }
  const TensorView a_log_view = View(a_log, 1, s.heads), dt_view = View(dt, 1, width), norm_view = View(norm, 1, s.d);
  Tensor a_log_device = ToDevice(a_log, 1, s.heads), dt_device = ToDevice(dt, 1, width), norm_device = ToDevice(norm, 1, s.d);
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    std::vector<float> q = RandomVector(n * width, 100 + step), k = RandomVector(n * width, 110 + step),
                       v = RandomVector(n * width, 120 + step), f = RandomVector(n * width, 130 + step, 2.0f),
                       beta = RandomVector(n * s.heads, 140 + step), gate = RandomVector(n * width, 150 + step);
    KdaDecodeInputs cpu_in, gpu_in;
    cpu_in.core = {s.heads, s.d, View(q, n, width), View(k, n, width), View(v, n, width), View(f, n, width),
                   View(beta, n, s.heads), a_log_view, dt_view};
    Tensor dq = ToDevice(q, n, width), dk = ToDevice(k, n, width), dv = ToDevice(v, n, width),
           df = ToDevice(f, n, width), dbeta = ToDevice(beta, n, s.heads), dgate = ToDevice(gate, n, width);
    gpu_in.core = {s.heads, s.d, dq.view(), dk.view(), dv.view(), df.view(), dbeta.view(), a_log_device.view(),
                   dt_device.view()};
    for (int i = 0; i < 3; ++i) cpu_in.conv_weights[i] = conv_host[i], gpu_in.conv_weights[i] = conv_device[i];
    cpu_in.out_gate = View(gate, n, width);
    gpu_in.out_gate = dgate.view();
    cpu_in.out_norm = norm_view;
    gpu_in.out_norm = norm_device.view();
    cpu_in.eps = gpu_in.eps = 1e-5f;
    std::vector<KdaDecodeSequence> cpu_seqs(n), gpu_seqs(n);
    for (int64_t i = 0; i < n; ++i) {
      cpu_seqs[i].row = gpu_seqs[i].row = rows[i];
      cpu_seqs[i].state = cpu_states[i].data();
      gpu_seqs[i].state = gpu_states[i].data<float>() + i % 2;
      for (int c = 0; c < 3; ++c) {
        cpu_seqs[i].conv_tails[c] = cpu_tails[3 * i + c].data();
        gpu_seqs[i].conv_tails[c] = gpu_tails[3 * i + c].data<float>();
      }
    }
    std::vector<float> cpu_out(n * width);
    cpu_.KdaDecodeStep(cpu_in, cpu_seqs, View(cpu_out, n, width));
    Tensor out = Poisoned(n, width);
    cuda_->KdaDecodeStep(gpu_in, gpu_seqs, out.view());
    ExpectClose(ToHost(out.view()), cpu_out, kFp32Tolerance, "decode step output");
    for (int64_t i = 0; i < n; ++i) {
      std::vector<float> state = ToHost(gpu_states[i].view());
      state.erase(state.begin(), state.begin() + i % 2);
      ExpectClose(state, cpu_states[i], kFp32Tolerance, "state");
      for (int c = 0; c < 3; ++c) ExpectClose(ToHost(gpu_tails[3 * i + c].view()), cpu_tails[3 * i + c], 0, "conv tail");
    }
  }
}

// Taps 4 (the model's) and 2 run the fused kernel; 5 is past it and takes the composition.
TEST_P(CudaKda, DecodeStepMatchesTheCpuComposition) {
  for (int64_t kernel : {4, 2, 5}) {
    SCOPED_TRACE(::testing::Message() << "conv kernel " << kernel);
    CompareDecodeStep(kernel);
    if (GetParam().lengths.size() > 8) break;  // the many-sequence case: the model's taps only
  }
}

struct MlaCase {
  std::string name;
  MlaParams params;
  std::vector<int64_t> cached, lengths;
  std::vector<MlaForm> forms;  // per sequence
  int64_t page_rows = 32;       // of the latent caches, their pages shuffled
  // Sequence 0's history row `boosted_row` times `boost`: its key's logits `boost` times as large,
  // so that where they are the largest a row's softmax reference moves past what it accumulated.
  int64_t boosted_row = -1;
  float boost = 1.0f;
};

class CudaMla : public CudaVsCpu, public ::testing::WithParamInterface<MlaCase> {
 protected:
  void CompareMla(const MlaCase& c, MatmulPrecision precision);
};

// Both precisions: serving (bf16 latent pages; absorbed rows on tensor cores for the Kimi shapes:
// bf16 query, keys and probabilities, so agreement to ~1e-2 of the output scale) and fp32
// validation (F32 pages, the CUDA-core kernel, 1e-4). The expanded form rounds the latent to bf16
// for its key/value product at serving precision too.
// At serving precision the expanded rows run on both tensor-core kernels (warpgroup products where
// they run, and mma.sync), and the absorbed rows on tensor cores (where they run) and on the
// CUDA-core kernel over the same bf16 pages. The expanded rows also run with windows of 64, 128
// and 4,096 keys: histories longer than a window attended window by window (the windows' results
// combined by their log-sum-exps), shorter ones grouped into launches of at most a window's keys.
TEST_P(CudaMla, MatchesTheCpu) {
  struct Run {
    MatmulPrecision precision;
    bool wgmma;  // expanded on warpgroup products, absorbed on tensor cores
    int64_t window_keys = CudaBackendOptions{}.mla_expanded_window_keys;
  };
  for (const Run run : {Run{MatmulPrecision::kHalf, true}, Run{MatmulPrecision::kHalf, false},
                        Run{MatmulPrecision::kHalf, true, 64}, Run{MatmulPrecision::kHalf, false, 128},
                        Run{MatmulPrecision::kHalf, true, 4096}, Run{MatmulPrecision::kF32, true}}) {
    const bool any_expanded = std::find(GetParam().forms.begin(), GetParam().forms.end(), MlaForm::kExpanded) !=
                              GetParam().forms.end();
    if (run.window_keys != CudaBackendOptions{}.mla_expanded_window_keys && !any_expanded) continue;
    std::string why;
    cuda_ = CudaBackend::Create({.matmul_precision = run.precision,
                                 .mla_expanded_wgmma = run.wgmma,
                                 .mla_absorbed_tensor_cores = run.wgmma,
                                 .mla_expanded_window_keys = run.window_keys},
                                &why);
    ASSERT_NE(cuda_, nullptr) << why;
    SCOPED_TRACE(::testing::Message() << (run.wgmma ? "on warpgroup products where they run"
                                                    : "on mma.sync and CUDA cores")
                                      << ", windows of " << run.window_keys << " keys");
    CompareMla(GetParam(), run.precision);
  }
}

void CudaMla::CompareMla(const MlaCase& c, MatmulPrecision precision) {
  const MlaParams& p = c.params;
  const int64_t width = p.kv_lora_rank + p.qk_rope_dim;
  const int64_t kv = p.num_heads * (p.qk_nope_dim + p.v_dim);
  const int64_t q_width = p.num_heads * (p.qk_nope_dim + p.qk_rope_dim);
  const int64_t t = std::accumulate(c.lengths.begin(), c.lengths.end(), int64_t{0});
  std::vector<float> q = RandomVector(t * q_width, 1);
  std::vector<float> latent = RandomVector(t * width, 2);
  std::vector<uint16_t> kv_b = ToBF16(RandomVector(kv * p.kv_lora_rank, 3, 0.2f));
  const TensorView kv_b_host = MakeView(kv_b.data(), DType::kBF16, kv, p.kv_lora_rank);
  const TensorView kv_b_device = cuda_->AdoptWeight(kv_b_host);
  Tensor dq = ToDevice(q, t, q_width);
  Tensor dlatent = ToDevice(latent, t, width);
  // Each cache's pages in one buffer per backend, in the same shuffled order.
  // Rows past each history hold NaN, as a reused page may hold anything: no kernel may let them
  // into a sum (a zero probability times NaN is NaN).
  std::vector<testing::PageLayout> layouts;
  std::vector<std::vector<float>> cpu_caches;
  std::vector<Tensor> gpu_caches;
  std::vector<std::vector<void*>> cpu_pages, gpu_pages;
  // The CUDA backend's pages are BF16 at serving precision: its copy of each fp32 history is
  // rounded, as its cache would hold it, each row's elements where LatentOffset places them (the
  // Kimi width: in column groups, swizzled), and the CPU's pages are compared with it rounded.
  const DType cache_dtype = cuda_->LatentCacheDType();
  EXPECT_EQ(cache_dtype, precision == MatmulPrecision::kHalf ? DType::kBF16 : DType::kF32);
  const auto as_cached = [&](std::vector<float> values) {
    return cache_dtype == DType::kBF16 ? RoundedToBF16(values) : values;
  };
  std::vector<MlaSequence> cpu_seqs, gpu_seqs;
  int64_t begin = 0;
  bool any_expanded = false;
  for (size_t i = 0; i < c.cached.size(); ++i) {
    const testing::PageLayout& layout =
        layouts.emplace_back(c.cached[i] + c.lengths[i], c.page_rows, width, 50 + i);
    std::vector<float> history = RandomVector(c.cached[i] * width, 30 + i);
    if (i == 0 && c.boosted_row >= 0) {
      for (int64_t col = 0; col < width; ++col) history[c.boosted_row * width + col] *= c.boost;
    }
    cpu_caches.push_back(layout.ToBuffer(history, std::numeric_limits<float>::quiet_NaN()));
    gpu_caches.push_back(ToDevice(layout.ToBuffer(history, std::numeric_limits<float>::quiet_NaN(), cache_dtype), 1,
                                  layout.buffer_floats(), cache_dtype));
    cpu_pages.push_back(layout.Pages(cpu_caches.back().data()));
    gpu_pages.push_back(layout.Pages(gpu_caches.back().view().data, static_cast<int64_t>(DTypeSize(cache_dtype))));
    cpu_seqs.push_back({{begin, c.lengths[i]}, c.forms[i], {cpu_pages.back().data(), c.page_rows}, c.cached[i]});
    gpu_seqs.push_back(
        {{begin, c.lengths[i]}, c.forms[i], {gpu_pages.back().data(), c.page_rows, cache_dtype}, c.cached[i]});
    any_expanded = any_expanded || c.forms[i] == MlaForm::kExpanded;
    begin += c.lengths[i];
  }
  std::vector<float> cpu_out(t * p.num_heads * p.v_dim);
  cpu_.MlaAttention(p, View(q, t, q_width), View(latent, t, width), kv_b_host, cpu_seqs,
                    View(cpu_out, t, p.num_heads * p.v_dim));
  Tensor out = Poisoned(t, p.num_heads * p.v_dim);
  cuda_->MlaAttention(p, dq.view(), dlatent.view(), kv_b_device, gpu_seqs, out.view());
  // Serving precision keeps bf16 latent pages, so keys and values are rounded on every path (the
  // CPU's stay fp32).
  const bool bf16_inputs = precision == MatmulPrecision::kHalf;
  const bool expanded_on_tensor_cores = precision == MatmulPrecision::kHalf && any_expanded && p.qk_nope_dim == 128 &&
                                        p.qk_rope_dim == 64 && p.v_dim == 128;
  const std::string what = std::string(precision == MatmulPrecision::kHalf ? "serving" : "fp32") + " mla output";
  ExpectClose(ToHost(out.view()), cpu_out,
              expanded_on_tensor_cores ? kAttentionTolerance : bf16_inputs ? kMatMulTolerance : kFp32Tolerance, what);
  for (size_t i = 0; i < c.cached.size(); ++i) {
    const int64_t rows = c.cached[i] + c.lengths[i];
    ExpectClose(layouts[i].FromBuffer(ToHost(gpu_caches[i].view()), rows, cache_dtype),
                as_cached(layouts[i].FromBuffer(cpu_caches[i], rows)), 0, "latent cache");
  }
}

std::vector<MlaCase> MlaCases() {
  const MlaParams small{3, 40, 20, 12, 28, 1.0f / std::sqrt(32.0f)};
  // Kimi-Linear-48B-A3B's MLA: 32 heads, latent rank 512, nope 128, rope 64, v 128.
  const MlaParams kimi{32, 512, 128, 64, 128, 1.0f / std::sqrt(192.0f)};
  const MlaParams kimi20{20, 512, 128, 64, 128, 1.0f / std::sqrt(192.0f)};
  const MlaParams kimi_nope256{32, 512, 256, 64, 128, 1.0f / std::sqrt(320.0f)};
  const MlaParams wide{2, 64, 16, 8, 160, 1.0f / std::sqrt(24.0f)};
  const auto e = MlaForm::kExpanded, a = MlaForm::kAbsorbed;
  std::vector<MlaCase> cases = {
      {"small_expanded", small, {0, 5, 70}, {20, 1, 3}, {e, e, e}, 7},
      {"small_absorbed", small, {0, 5, 70}, {20, 1, 3}, {a, a, a}, 16},
      // Long enough that the CUDA-core kernel splits the keys into partitions, whose states the
      // merge combines in slices of 10 latent columns (rank 40) before W_UV.
      {"small_decode_long", small, {20000, 3000}, {1, 1}, {a, a}, 16},
      // Value rows of 160 columns (W_UV in five blocks of 32) after partitioned keys.
      {"wide_values_decode_long", wide, {6000, 40}, {1, 2}, {a, a}, 64},
      // Continuous batching: prefill pieces (expanded) beside decode rows (absorbed).
      {"kimi_mixed", kimi, {0, 100, 7, 300, 1}, {40, 17, 1, 1, 1}, {e, e, a, a, a}, 64},
      // Prefill pieces of several 64- or 128-row blocks, the last one partial (expanded on tensor
      // cores), the first one's 450 keys past the warpgroup kernel's ring of 4 tiles twice.
      {"kimi_prefill_long", kimi, {300, 0, 5}, {150, 70, 1}, {e, e, a}, 64},
      // One history key 4 times larger, in the fourth 64-key tile: the rows whose logit for it
      // passes their maximum so far by more than the softmax's lag move their reference there and
      // rescale what the first three tiles gave (in most tiles nothing moves). Its logits spread
      // ~15 against the others' ~3.7, so it moves about one (row, head) in seven. At 16 times the
      // outputs differed from the CPU's by 2.3% of their scale on both tensor-core kernels alike,
      // past the tolerance: bf16's rounding of q and the key moves a logit in proportion to it.
      {"kimi_prefill_boosted_key", kimi, {300, 0}, {150, 70}, {e, e}, 64, 200, 4.0f},
      // In windows of 64 or 128 keys: a prompt whose first row tile precedes its later windows
      // (left out of their launches), two short sequences in one launch and then one past it, and
      // a long history over many windows whose rows see all of them.
      {"kimi_prefill_windows", kimi, {0, 0, 40, 1000}, {200, 30, 50, 140}, {e, e, e, e}, 64},
      // One row tile per head (32 blocks) on 9,000 keys: its keys split over 4 blocks each
      // (MlaKeySplitCount on 132 multiprocessors; fewer on smaller GPUs), the splits merged; in
      // windows of 4,096 keys the first two windows split too, the second and third merging into
      // the first.
      {"kimi_prefill_split", kimi, {9000}, {40}, {e}, 64},
      // Pages of 48 rows: the tensor-core decode kernel's 64-key tiles cross pages.
      {"kimi_pages_of_48", kimi, {0, 100, 7, 300, 1}, {40, 17, 1, 1, 1}, {e, e, a, a, a}, 48},
      // Pages of 7 rows: a row's place in its page is not its cache row mod 8, which keys the
      // swizzle of BF16 pages (every kernel must use the cache row), and the tensor-core decode
      // kernel's 64-key tiles take pieces of ten pages.
      {"kimi_pages_of_7", kimi, {0, 100, 7, 300, 1}, {40, 17, 1, 1, 1}, {e, e, a, a, a}, 7},
      // Fewer heads than the tensor-core decode kernel's 32 rows of Q (the rest zero, not written).
      {"kimi_20_heads", kimi20, {3000, 70, 0}, {1, 1, 1}, {a, a, a}, 256},
      // Absorbed rows only, so the new rows are appended inside the absorb launch: a sequence of
      // seven new rows across the launch's 8-row groups, and one of three.
      {"kimi_decode_multi_row", kimi, {5000, 40, 700, 3}, {3, 1, 7, 2}, {a, a, a, a}, 64},
      // q_nope of 256, the most the tensor-core decode takes: the absorb's W_UK rows past the 128
      // it loads before its wait.
      {"kimi_nope_256", kimi_nope256, {3000, 70, 0}, {1, 1, 1}, {a, a, a}, 256},
      // Long contexts at small batches: a row's keys are split over many blocks.
      {"kimi_decode_long_1", kimi, {20000}, {1}, {a}, 256},
      {"kimi_decode_long_2", kimi, {9000, 33}, {1, 1}, {a, a}},
      // Unequal histories: the key split's blocks cross from row to row, one of them a
      // sequence's three new rows (each with one key more than the last), with an expanded
      // piece between absorbed rows.
      {"kimi_decode_ragged", kimi, {30000, 5, 700, 40, 0, 64, 2000}, {1, 3, 1, 20, 1, 1, 2},
       {a, a, a, e, a, a, a}, 32},
  };
  // Decode batches of 1, 64 and 256 rows (the absorbed kernel splits its work by row count).
  for (int rows : {1, 64, 256}) {
    MlaCase decode{"kimi_decode_" + std::to_string(rows), kimi, {}, {}, {}};
    for (int i = 0; i < rows; ++i) {
      decode.cached.push_back(1 + (i * 37) % 200);
      decode.lengths.push_back(1);
      decode.forms.push_back(a);
    }
    cases.push_back(decode);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaMla, ::testing::ValuesIn(MlaCases()),
                         [](const ::testing::TestParamInfo<MlaCase>& param) { return param.param.name; });

// 32 experts, the 48B's 256 (8 per lane of the top-k warp) and 1024 (32 per lane); the logits
// repeat in blocks of 8, so equal scores tie (the lower index wins).
TEST_F(CudaVsCpu, MoeRouting) {
  for (const int64_t experts : {int64_t{32}, int64_t{256}, int64_t{1024}}) {
    SCOPED_TRACE(experts);
    const int64_t t = 9, k = experts == 32 ? 4 : 8;
    std::vector<float> logits = RandomVector(t * experts, 1, 3.0f);
    for (int64_t i = 0; i < t * experts; ++i) {
      if (i % 8 == 5) logits[i] = logits[i - 5];
    }
    std::vector<uint16_t> bias = ToBF16(RandomVector(experts, 2, 0.05f));
    for (int64_t e = 0; e < experts; ++e) {
      if (e % 8 == 5) bias[e] = bias[e - 5];
    }
    const TensorView bias_host = MakeView(bias.data(), DType::kBF16, 1, experts);
    for (const MoeRouting& routing : {MoeRouting{k, 1, 1, true, 2.446f, false}, MoeRouting{k, 4, 2, true, 2.446f, false},
                                      MoeRouting{k, 1, 1, false, 1.0f, true}}) {
      std::vector<int32_t> cpu_ids(t * k);
      std::vector<float> cpu_w(t * k);
      cpu_.MoeRoute(View(logits, t, experts), bias_host, routing, MakeView(cpu_ids.data(), DType::kI32, t, k),
                    View(cpu_w, t, k));
      Tensor dlogits = ToDevice(logits, t, experts);
      Tensor ids = cuda_->Allocate(t, k, DType::kI32);
      Tensor w = Poisoned(t, k);
      cuda_->MoeRoute(dlogits.view(), cuda_->AdoptWeight(bias_host), routing, ids.view(), w.view());
      std::vector<int32_t> gpu_ids(t * k);
      cuda_->Download(ids.view(), gpu_ids.data());
      EXPECT_EQ(gpu_ids, cpu_ids) << "groups " << routing.num_groups;
      ExpectClose(ToHost(w.view()), cpu_w, 1e-6, "routing weights");
    }
  }
}

// Greedy sampling on the device against the host scan (Backend::ArgmaxRows' definition, which the
// CPU backend uses): the vocabulary's size and an odd one, ties (the lowest index wins), masked
// rows, rows a sampler must reject, and a strided view.
TEST_F(CudaVsCpu, ArgmaxRowsMatchesTheHostScan) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // 6 columns: fewer than the blocks a row is split over.
  for (const int64_t cols : {int64_t{163840}, int64_t{1001}, int64_t{6}}) {
    SCOPED_TRACE(cols);
    const int64_t rows = 9, stride = cols + 4;
    std::vector<float> x = RandomVector(rows * stride, 7, 4.0f);
    const auto at = [&](int64_t r, int64_t c) -> float& { return x[r * stride + c]; };
    for (int64_t c : {cols - 1, cols / 2, int64_t{3}}) at(1, c) = 50.0f;     // ties: 3 wins
    for (int64_t c = 0; c < cols; ++c) at(2, c) = c % 97 == 5 ? at(2, c) : -kInf;  // masked
    at(3, cols / 3) = std::nanf("");                                          // rejected
    at(4, cols - 1) = kInf;                                                   // rejected
    for (int64_t c = 0; c < cols; ++c) at(5, c) = -kInf;                     // rejected
    at(6, cols - 1) = 60.0f;                                                  // the last one
    for (int64_t c = 0; c < cols; ++c) at(7, c) = -1.0f;                     // all equal: 0
    const TensorView host = {x.data(), DType::kF32, rows, cols, stride};
    std::vector<int32_t> want(rows), got(rows, -7);
    cpu_.ArgmaxRows(host, MakeView(want.data(), DType::kI32, rows, 1));
    EXPECT_EQ(want[1], 3);
    EXPECT_EQ(want[3], -1);
    EXPECT_EQ(want[4], -1);
    EXPECT_EQ(want[5], -1);
    EXPECT_EQ(want[6], cols - 1);
    EXPECT_EQ(want[7], 0);
    Tensor device = ToDevice(x, rows, stride);
    Tensor ids = cuda_->Allocate(rows, 1, DType::kI32);
    cuda_->ArgmaxRows(device.view().Cols(0, cols), ids.view());
    cuda_->Download(ids.view(), got.data());
    EXPECT_EQ(got, want);
  }
}

// Sampling penalties on the device against Backend::ApplyPenalties' host definition
// (kernels::PenalizedLogit): the same bits, for repetition penalties above and below 1, counts of
// 0 to 3, positive, negative, zero and -inf logits, several rows, and padding entries (token -1).
TEST_F(CudaVsCpu, ApplyPenaltiesMatchTheHost) {
  const int64_t rows = 3, cols = 1001;
  std::vector<float> x = RandomVector(rows * cols, 9, 4.0f);
  x[5] = 0.0f;
  x[cols + 7] = -std::numeric_limits<float>::infinity();
  std::vector<LogitPenalty> penalties;
  for (int64_t r = 0; r < rows; ++r) {
    for (int32_t token = static_cast<int32_t>(r); token < cols; token += 7) {
      const float repetition = token % 3 == 0 ? 1.0f : token % 3 == 1 ? 1.3f : 0.7f;
      penalties.push_back({r, token, token % 4, repetition, 0.5f - 0.1f * static_cast<float>(r), 0.3f});
    }
  }
  penalties.push_back({0, 5, 2, 1.2f, 0.4f, 0.1f});
  penalties.push_back({1, 7, 1, 1.2f, 0.4f, 0.1f});
  penalties.push_back({0, -1});
  std::vector<float> want = x;
  cpu_.ApplyPenalties(View(want, rows, cols), penalties);
  Tensor device = ToDevice(x, rows, cols);
  cuda_->ApplyPenalties(device.view(), penalties);
  EXPECT_EQ(ToHost(device.view()), want);
  EXPECT_NE(want, x);
}

// The device draw against kernels::SampleRow on the host (Backend::SampleRows' definition): rows
// of the vocabulary's size and odd sizes, continuous logits and logits of six levels (ties at
// every boundary), each truncation alone and together, strided rows, and the rows a sampler
// rejects. The kernel's weights (expf) and sums (another order; the nucleus in 2^-40 fixed
// point) can move a boundary by rounding only, so on these draws the tokens are equal.
TEST_F(CudaVsCpu, SampleRowsDrawWhatTheHostDraws) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const std::vector<RowSampling> shapes = {
      {1.0f, 0, 1.0f, 0.0f, 0},    {0.7f, 1, 1.0f, 0.0f, 0},    {1.3f, 50, 1.0f, 0.0f, 0},
      {1.0f, 0, 0.9f, 0.0f, 0},    {0.8f, 300, 0.5f, 0.0f, 0},  {1.0f, 0, 1.0f, 0.05f, 0},
      {1.0f, 40, 0.95f, 0.02f, 0}, {0.5f, 0, 0.01f, 0.0f, 0},   {0.0f, 0, 1.0f, 0.0f, 0}};
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  int64_t checked = 0;
  for (const int64_t cols : {int64_t{163840}, int64_t{1001}, int64_t{7}}) {
    for (const int levels : {0, 6}) {
      SCOPED_TRACE(::testing::Message() << cols << " columns, levels " << levels);
      const int64_t rows = static_cast<int64_t>(shapes.size()) * 3 + 3, stride = cols + 4;
      std::vector<float> x = RandomVector(rows * stride, 20 + cols + levels, levels > 0 ? 6.0f : 3.0f);
      if (levels > 0) {
        for (float& v : x) v = std::floor(std::fabs(v)) < levels ? std::floor(std::fabs(v)) : 0.0f;
      }
      std::vector<RowSampling> draws;
      for (int64_t r = 0; r < rows - 3; ++r) {
        draws.push_back(shapes[r % shapes.size()]);
        draws.back().uniform = uniform(rng);
        if (draws.back().top_k > cols) draws.back().top_k = static_cast<int32_t>(cols - 1);
      }
      // The last three rows are rejected: a NaN, a +inf, nothing but -inf.
      x[(rows - 3) * stride + cols / 2] = std::nanf("");
      x[(rows - 2) * stride + cols - 1] = kInf;
      for (int64_t c = 0; c < cols; ++c) x[(rows - 1) * stride + c] = -kInf;
      for (int i = 0; i < 3; ++i) draws.push_back(shapes[0]);
      std::vector<int32_t> want(rows);
      std::vector<float> scratch;
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> row(x.begin() + r * stride, x.begin() + r * stride + cols);
        want[r] = static_cast<int32_t>(SampleRow(row, draws[r], scratch));
      }
      Tensor device = ToDevice(x, rows, stride);
      Tensor ids = cuda_->Allocate(rows, 1, DType::kI32);
      cuda_->SampleRows(device.view().Cols(0, cols), draws, ids.view());
      std::vector<int32_t> got(rows, -7);
      cuda_->Download(ids.view(), got.data());
      EXPECT_EQ(got, want);
      EXPECT_EQ(want[rows - 1], -1);
      checked += rows;
    }
  }
  EXPECT_EQ(checked, 6 * 30);
}

// `count` random bf16 experts: expert e's gate, up and down from seeds seed + e, seed + 100 + e
// and seed + 200 + e. The views point into `data`, hence no copies.
struct RandomExperts {
  RandomExperts(int64_t count, int64_t inner, int64_t hidden, uint64_t seed) {
    for (int64_t e = 0; e < count; ++e) {
      data.push_back(ToBF16(RandomVector(inner * hidden, seed + e)));
      data.push_back(ToBF16(RandomVector(inner * hidden, seed + 100 + e)));
      data.push_back(ToBF16(RandomVector(hidden * inner, seed + 200 + e)));
    }
    for (int64_t e = 0; e < count; ++e) {
      views.push_back({MakeView(data[3 * e].data(), DType::kBF16, inner, hidden),
                       MakeView(data[3 * e + 1].data(), DType::kBF16, inner, hidden),
                       MakeView(data[3 * e + 2].data(), DType::kBF16, hidden, inner)});
    }
  }
  RandomExperts(const RandomExperts&) = delete;
  RandomExperts& operator=(const RandomExperts&) = delete;

  std::vector<std::vector<uint16_t>> data;
  std::vector<ExpertWeights> views;
};

// Experts and combine for a routing of `t` tokens over `experts` experts (held as two shards, as
// expert workers would hold them), on every expert kernel of the backend: the decode one for at
// most 32 slots, the grouped one where the shapes allow (bf16, multiples of 8; tiles of 16 rows
// for few rows per expert, 64 for many, on mma.sync; and 128-row tiles on warpgroup products,
// forced for every shape) and the per-expert cuBLAS one.
struct MoeCase {
  std::string name;
  int64_t t, experts, k, hidden, inner;
  double skew;  // added to the logits of the first experts: a ragged spread of rows
};

class CudaMoe : public CudaVsCpu, public ::testing::WithParamInterface<MoeCase> {};

TEST_P(CudaMoe, ExpertsAndCombineMatchTheCpu) {
  const MoeCase& c = GetParam();
  std::vector<float> logits = RandomVector(c.t * c.experts, 1, 3.0f);
  for (int64_t t = 0; t < c.t; ++t) {
    for (int64_t e = 0; e < c.experts / 4; ++e) logits[t * c.experts + e] += static_cast<float>(c.skew);
  }
  std::vector<int32_t> ids(c.t * c.k);
  std::vector<float> weights(c.t * c.k);
  cpu_.MoeRoute(View(logits, c.t, c.experts), TensorView{}, MoeRouting{c.k, 1, 1, true, 2.446f, false},
                MakeView(ids.data(), DType::kI32, c.t, c.k), View(weights, c.t, c.k));
  const RandomExperts host_experts(c.experts, c.inner, c.hidden, 100);
  const std::vector<ExpertWeights>& cpu_experts = host_experts.views;
  std::vector<float> x = RandomVector(c.t * c.hidden, 7);
  std::vector<float> cpu_slots(c.t * c.k * c.hidden), cpu_out(c.t * c.hidden, 0.5f);
  cpu_.MoeExperts(View(x, c.t, c.hidden), MakeView(ids.data(), DType::kI32, c.t, c.k), cpu_experts, 0,
                  View(cpu_slots, c.t * c.k, c.hidden));
  cpu_.MoeCombine(View(cpu_slots, c.t * c.k, c.hidden), View(weights, c.t, c.k), View(cpu_out, c.t, c.hidden));

  struct Kernel {
    std::string what;
    MoeExpertsKernel kernel;
    int64_t decode_max_slots;
    int64_t wide_tiles_min_rows;
    int64_t cublas_grouped_min_slots = 0;
  };
  constexpr int64_t kNever = std::numeric_limits<int32_t>::max();
  for (const Kernel& kernel :
       {Kernel{"decode where few slots, else grouped", MoeExpertsKernel::kGrouped, 32, kNever},
        Kernel{"grouped, mma.sync tiles", MoeExpertsKernel::kGrouped, 0, kNever},
        Kernel{"grouped, wide warpgroup tiles where built", MoeExpertsKernel::kGrouped, 0, 0},
        Kernel{"cuBLAS grouped products", MoeExpertsKernel::kGrouped, 0, 0, 1},
        Kernel{"per expert", MoeExpertsKernel::kPerExpert, 0, kNever}}) {
    std::string why;
    CudaBackendOptions options;
    options.moe_experts = kernel.kernel;
    options.moe_decode_max_slots = kernel.decode_max_slots;
    options.moe_wide_tiles_min_rows = kernel.wide_tiles_min_rows;
    options.moe_cublas_grouped_min_slots = kernel.cublas_grouped_min_slots;
    cuda_ = CudaBackend::Create(options, &why);
    ASSERT_NE(cuda_, nullptr) << why;
    const std::string& what = kernel.what;
    const std::vector<ExpertWeights> gpu_experts = AdoptExperts(cpu_experts);
    Tensor dx = ToDevice(x, c.t, c.hidden);
    Tensor dids = cuda_->Allocate(c.t, c.k, DType::kI32);
    cuda_->Upload(ids.data(), dids.view());
    Tensor slots = Poisoned(c.t * c.k, c.hidden);
    const int64_t half = c.experts / 2;
    const std::span<const ExpertWeights> all(gpu_experts);
    cuda_->MoeExperts(dx.view(), dids.view(), all.subspan(0, half), 0, slots.view());
    cuda_->MoeExperts(dx.view(), dids.view(), all.subspan(half), half, slots.view());
    ExpectClose(ToHost(slots.view()), cpu_slots, kMatMulTolerance, what + " expert outputs");
    // Again over the same tensors: the cached expert tables are reused.
    Tensor again = Poisoned(c.t * c.k, c.hidden);
    cuda_->MoeExperts(dx.view(), dids.view(), all.subspan(0, half), 0, again.view());
    cuda_->MoeExperts(dx.view(), dids.view(), all.subspan(half), half, again.view());
    EXPECT_EQ(ToHost(again.view()), ToHost(slots.view())) << what << ": a second run differs";
    Tensor out = ToDevice(std::vector<float>(c.t * c.hidden, 0.5f), c.t, c.hidden);
    cuda_->MoeCombine(slots.view(), ToDevice(weights, c.t, c.k).view(), out.view());
    ExpectClose(ToHost(out.view()), cpu_out, kMatMulTolerance, what + " combine");

    // Where the wide tiles run, MoeFfn keeps the slot rows in bf16: each the fp32 sum rounded once,
    // and combined as the fp32 combine combines those rounded values.
    const DType slot_dtype = cuda_->MoeSlotDType(dx.view(), c.k, all.subspan(0, half));
    const bool wide_here = kernel.wide_tiles_min_rows == 0 && kernel.cublas_grouped_min_slots == 0 &&
                           kernel.kernel == MoeExpertsKernel::kGrouped && c.t * c.k > kernel.decode_max_slots &&
                           c.inner % 8 == 0 && MoeWgmmaRuns();
    EXPECT_EQ(slot_dtype, wide_here ? DType::kBF16 : DType::kF32) << what;
    EXPECT_EQ(cuda_->MoeSlotDType(dx.view(), c.k, all.subspan(half)), slot_dtype) << what << ", second shard";
    if (kernel.wide_tiles_min_rows == kNever) {
      // Only the wide tiles write bf16 slot rows: elsewhere the call fails and the failure is held.
      Tensor refused = Poisoned(c.t * c.k, c.hidden, DType::kBF16);
      cuda_->MoeExperts(dx.view(), dids.view(), all.subspan(0, half), 0, refused.view());
      EXPECT_TRUE(cuda_->TakeFailure().failed()) << what << ": bf16 slot rows off the wide tiles";
    }
    if (slot_dtype != DType::kBF16) continue;
    Tensor narrow = Poisoned(c.t * c.k, c.hidden, DType::kBF16);
    cuda_->MoeExperts(dx.view(), dids.view(), all.subspan(0, half), 0, narrow.view());
    cuda_->MoeExperts(dx.view(), dids.view(), all.subspan(half), half, narrow.view());
    const std::vector<float> rounded = RoundedToBF16(ToHost(slots.view()));
    EXPECT_EQ(ToHost(narrow.view()), rounded) << what << ": bf16 slot rows";
    Tensor narrow_out = ToDevice(std::vector<float>(c.t * c.hidden, 0.5f), c.t, c.hidden);
    Tensor rounded_out = ToDevice(std::vector<float>(c.t * c.hidden, 0.5f), c.t, c.hidden);
    cuda_->MoeCombine(narrow.view(), ToDevice(weights, c.t, c.k).view(), narrow_out.view());
    cuda_->MoeCombine(ToDevice(rounded, c.t * c.k, c.hidden).view(), ToDevice(weights, c.t, c.k).view(),
                      rounded_out.view());
    EXPECT_EQ(ToHost(narrow_out.view()), ToHost(rounded_out.view())) << what << ": combine of bf16 slot rows";
  }
}

// The whole MoE FFN (router, routing, experts, shared expert, combine), with and without a shared
// expert, against the CPU's composition: fused (LaunchMoeDecodeFfn) up to the backend's limit of
// routed slots (the default, 16, and then up to moe_decode_max_slots, 32), composed on the device
// beyond it and where the grouped kernels do not take the shapes; plain and grouped routing, fp32
// and bf16 routers. Decode sizes only: many tokens would meet near ties of router scores that
// fp32 sums in another order may break the other way.
class CudaMoeFfn : public CudaMoe {};

TEST_P(CudaMoeFfn, WholeFfnMatchesTheCpuComposition) {
  const MoeCase& c = GetParam();
  // The routed experts, then the shared expert.
  const RandomExperts host_experts(c.experts + 1, c.inner, c.hidden, 400);
  const std::span<const ExpertWeights> cpu_experts = std::span(host_experts.views).first(c.experts);
  const ExpertWeights& cpu_shared = host_experts.views.back();
  std::vector<float> router = RandomVector(c.experts * c.hidden, 13, 0.2f);
  for (int64_t e = 0; e < c.experts / 4; ++e) {
    for (int64_t i = 0; i < c.hidden; ++i) router[e * c.hidden + i] *= static_cast<float>(1.0 + c.skew);
  }
  std::vector<float> bias = RandomVector(c.experts, 14, 0.1f);
  // Plain top-k, and grouped top-k with the weights taken from the biased scores.
  const std::array<MoeRouting, 2> routings = {{{c.k, 1, 1, true, 2.446f, false}, {c.k, 4, 2, false, 1.5f, true}}};
  // The router in fp32 (the models') and in bf16, the same rounded values for both backends; x
  // holds bf16 values, so that cuBLAS (past skinny_matmul_max_rows) rounds nothing either and
  // only the order of fp32 sums differs.
  std::vector<uint16_t> router_bf16 = ToBF16(router);
  std::vector<float> x = RoundedToBF16(RandomVector(c.t * c.hidden, 17));
  for (const int64_t fused_max_slots : {CudaBackendOptions{}.moe_fused_max_slots, int64_t{1024}}) {
    std::string why;
    cuda_ = CudaBackend::Create({.moe_fused_max_slots = fused_max_slots}, &why);
    ASSERT_NE(cuda_, nullptr) << why;
    const std::vector<ExpertWeights> gpu_experts = AdoptExperts(cpu_experts);
    const ExpertWeights gpu_shared = AdoptExpert(cpu_shared);
    const TensorView cpu_router_bf16 = MakeView(router_bf16.data(), DType::kBF16, c.experts, c.hidden);
    const std::array<TensorView, 2> cpu_routers = {View(router, c.experts, c.hidden), cpu_router_bf16};
    const std::array<TensorView, 2> gpu_routers = {cuda_->AdoptWeightF32(cpu_routers[0]),
                                                   cuda_->AdoptWeight(cpu_router_bf16)};
    const TensorView gpu_bias = cuda_->AdoptWeightF32(View(bias, 1, c.experts));
    Tensor dx = ToDevice(x, c.t, c.hidden);
    for (size_t ri = 0; ri < routings.size(); ++ri) {
      for (size_t wi = 0; wi < cpu_routers.size(); ++wi) {
        for (const bool with_shared : {true, false}) {
          const std::string what = (with_shared ? "with the shared expert" : "routed experts only") +
                                   std::string(", fused up to ") + std::to_string(fused_max_slots) +
                                   " slots, routing " + std::to_string(ri) + (wi == 0 ? ", fp32" : ", bf16") +
                                   " router";
          std::vector<float> cpu_out(c.t * c.hidden);
          cpu_.MoeFfn(View(x, c.t, c.hidden), cpu_routers[wi], View(bias, 1, c.experts), routings[ri], cpu_experts,
                      with_shared ? &cpu_shared : nullptr, View(cpu_out, c.t, c.hidden));
          Tensor out = Poisoned(c.t, c.hidden);
          for (int run = 0; run < 2; ++run) {  // the second over the cached expert table
            cuda_->MoeFfn(dx.view(), gpu_routers[wi], gpu_bias, routings[ri], gpu_experts,
                          with_shared ? &gpu_shared : nullptr, out.view());
            ExpectClose(ToHost(out.view()), cpu_out, kMatMulTolerance, what);
          }
          EXPECT_FALSE(cuda_->TakeFailure().failed()) << what;
        }
      }
    }
  }
}

// The fused decode FFN's down-and-combine kernel starts before the routing of its own call has
// run and loads the rows of the experts the ids name then; after its wait it must sum with the
// routing's experts. The call here follows a slow product that makes its x (one wave of blocks:
// the router, the routing, gate/up and down all launch while it runs), and the ids buffer last
// held another call's experts, so the kernel most likely reads stale ids first (timing decides;
// nothing here observes which rows it loaded).
TEST_F(CudaVsCpu, FusedMoeFfnStartedBeforeItsRoutingSumsTheRoutedExperts) {
  const int64_t t = 2, experts = 64, k = 8, hidden = 512, inner = 256, wide = 65536;
  const MoeRouting routing{k, 1, 1, true, 2.446f, false};
  // The routed experts, then the shared expert.
  const RandomExperts host_experts(experts + 1, inner, hidden, 800);
  const std::span<const ExpertWeights> cpu_experts = std::span(host_experts.views).first(experts);
  const ExpertWeights& cpu_shared = host_experts.views.back();
  const std::vector<ExpertWeights> gpu_experts = AdoptExperts(cpu_experts);
  const ExpertWeights gpu_shared = AdoptExpert(cpu_shared);
  std::vector<float> router = RandomVector(experts * hidden, 13, 0.2f), bias = RandomVector(experts, 14, 0.1f);
  const TensorView gpu_router = cuda_->AdoptWeightF32(View(router, experts, hidden));
  const TensorView gpu_bias = cuda_->AdoptWeightF32(View(bias, 1, experts));
  // 64 MiB of weight in 256 blocks of two rows: one wave, ~15 µs on an H200.
  std::vector<uint16_t> slow_w = ToBF16(RandomVector(hidden * wide, 15, 0.01f));
  const TensorView gpu_slow_w = cuda_->AdoptWeight(MakeView(slow_w.data(), DType::kBF16, hidden, wide));

  std::vector<float> x1 = RandomVector(t * hidden, 16);
  Tensor dx1 = ToDevice(x1, t, hidden), dx0 = ToDevice(RandomVector(t * wide, 17), t, wide);
  Tensor dx2 = Poisoned(t, hidden), out1 = Poisoned(t, hidden), out2 = Poisoned(t, hidden);
  for (int i = 0; i < 3; ++i) {
    cuda_->MoeFfn(dx1.view(), gpu_router, gpu_bias, routing, gpu_experts, &gpu_shared, out1.view());
    cuda_->MatMul(dx0.view(), gpu_slow_w, dx2.view());
    cuda_->MoeFfn(dx2.view(), gpu_router, gpu_bias, routing, gpu_experts, &gpu_shared, out2.view());
  }
  ASSERT_FALSE(cuda_->TakeFailure().failed());
  std::vector<float> x2 = ToHost(dx2.view());
  std::vector<float> cpu_out1(t * hidden), cpu_out2(t * hidden);
  cpu_.MoeFfn(View(x1, t, hidden), View(router, experts, hidden), View(bias, 1, experts), routing, cpu_experts,
              &cpu_shared, View(cpu_out1, t, hidden));
  cpu_.MoeFfn(View(x2, t, hidden), View(router, experts, hidden), View(bias, 1, experts), routing, cpu_experts,
              &cpu_shared, View(cpu_out2, t, hidden));
  ExpectClose(ToHost(out1.view()), cpu_out1, kMatMulTolerance, "the call before the slow product");
  ExpectClose(ToHost(out2.view()), cpu_out2, kMatMulTolerance, "the call after it");
}

std::vector<MoeCase> MoeCases() {
  return {
      {"inner_not_multiple_of_8", 9, 32, 4, 48, 20, 0.0},  // the grouped kernel falls back
      {"decode_1", 1, 32, 4, 64, 40, 0.0},
      {"decode_8_ragged", 8, 32, 4, 200, 40, 2.0},          // 32 slots: the decode kernels, k tails
      {"decode_top8_of_256", 2, 256, 8, 256, 96, 0.0},
      {"decode_ragged", 13, 32, 4, 264, 40, 2.0},           // k and n tails, uneven experts
      // Down rows of 520: past the two slices the down-and-combine kernel loads before its wait,
      // with a partial third.
      {"decode_long_down_rows", 2, 16, 4, 136, 520, 1.0},
      {"prefill_tiles_of_64", 160, 16, 4, 128, 72, 0.0},    // 40 rows per expert: tiles of 64
      {"prefill_ragged", 300, 32, 6, 136, 64, 3.0},
      // ~128 rows per expert, ragged: full and partial 128-row tiles; k and n tails of the wide
      // tiles (264 = 4 · 64 + 8 deep, 192 = 128 + 64 and 264 = 256 + 8 wide).
      {"prefill_wide_tiles", 512, 8, 2, 264, 192, 1.0},
      // 16,800 slots: grouped by many blocks (counting, laying out, placing) rather than one; about
      // 250 wide work items per shard and product, so persistent blocks take several in turn.
      {"prefill_many_slots", 2100, 32, 8, 264, 264, 1.0},
  };
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaMoe, ::testing::ValuesIn(MoeCases()),
                         [](const ::testing::TestParamInfo<MoeCase>& param) { return param.param.name; });

std::vector<MoeCase> DecodeMoeCases() {
  std::vector<MoeCase> cases;
  for (MoeCase& c : MoeCases()) {
    if (c.t <= 16) cases.push_back(std::move(c));
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(DecodeShapes, CudaMoeFfn, ::testing::ValuesIn(DecodeMoeCases()),
                         [](const ::testing::TestParamInfo<MoeCase>& param) { return param.param.name; });

}  // namespace
}  // namespace deltaserve::kernels::cuda
