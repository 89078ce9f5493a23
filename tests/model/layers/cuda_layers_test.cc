// Each block of the model (KDA mixer, MLA mixer, dense FFN, MoE FFN) on the CUDA backend against
// the CPU backend, with the public fixture's weights and a fresh state. Skips without a GPU.
#include <cmath>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/layers/ffn.h"
#include "model/layers/kda_mixer.h"
#include "model/layers/mla_mixer.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::model {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";
// bf16 activations in every matrix product (see cuda_backend_test.cc).
constexpr double kTolerance = 2e-2;

struct Side {
  kernels::Backend* backend;
  std::unique_ptr<Checkpoint> checkpoint;
  ModelWeights weights;
  std::unique_ptr<SequenceState> state;
};

class CudaLayersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!kernels::cuda::CudaDeviceAvailable(&why)) GTEST_SKIP() << "no usable CUDA device: " << why;
    cuda_ = kernels::cuda::CudaBackend::Create({}, &why);
    ASSERT_NE(cuda_, nullptr) << why;
    for (auto [side, backend] : {std::pair<Side*, kernels::Backend*>{&cpu_side_, &cpu_}, {&gpu_side_, cuda_.get()}}) {
      side->backend = backend;
      side->checkpoint = *Checkpoint::Open(kFixture);
      side->weights = *LoadModelWeights(*side->checkpoint, *backend, WeightScope{});
      side->state = std::make_unique<SequenceState>(side->checkpoint->config(), *backend, 0,
                                                    side->checkpoint->config().num_layers, 1);
    }
    config_ = cpu_side_.checkpoint->config();
  }

  // Runs `block` on both sides for `t` tokens of one sequence and compares the [t, D] outputs.
  void Compare(int64_t t, const std::function<void(const Step&, Side&, kernels::TensorView, kernels::TensorView)>& block,
               const char* what) {
    const int64_t d = config_.hidden_size;
    std::vector<float> x = testing::RandomVector(t * d, 7);
    std::vector<std::vector<float>> outputs;
    for (Side* side : {&cpu_side_, &gpu_side_}) {
      kernels::Tensor in = side->backend->Allocate(t, d, kernels::DType::kF32);
      side->backend->Upload(x.data(), in.view());
      kernels::Tensor out = side->backend->Allocate(t, d, kernels::DType::kF32);
      const StepSequence seq{{0, t}, side->state.get()};
      const Step step{*side->backend, config_, options_, {&seq, 1}, t};
      block(step, *side, in.view(), out.view());
      std::vector<float> host(t * d);
      side->backend->Download(out.view(), host.data());
      outputs.push_back(host);
    }
    double scale = 1e-6, error = 0;
    for (size_t i = 0; i < outputs[0].size(); ++i) {
      scale = std::max(scale, static_cast<double>(std::fabs(outputs[0][i])));
      error = std::max(error, static_cast<double>(std::fabs(outputs[0][i] - outputs[1][i])));
    }
    std::printf("[ layers   ] %s, %lld tokens: max error / scale = %.2e\n", what, static_cast<long long>(t),
                error / scale);
    EXPECT_LE(error / scale, kTolerance) << what;
  }

  kernels::cpu::CpuBackend cpu_{{.num_threads = 2}};
  std::unique_ptr<kernels::cuda::CudaBackend> cuda_;
  Side cpu_side_, gpu_side_;
  KimiLinearConfig config_;
  LayerOptions options_;
};

TEST_F(CudaLayersTest, EveryBlockMatchesTheCpu) {
  for (int64_t t : {1, 3, 20}) {
    Compare(t, [](const Step& s, Side& side, auto x, auto out) { KdaMixerForward(s, 0, side.weights.layer(0).kda, x, out); }, "kda mixer");
    Compare(t, [](const Step& s, Side& side, auto x, auto out) { MlaMixerForward(s, 3, side.weights.layer(3).mla, x, out); }, "mla mixer");
    Compare(t, [](const Step& s, Side& side, auto x, auto out) { DenseFfnForward(s.backend, side.weights.layer(0).dense, x, out); }, "dense ffn");
    Compare(t, [](const Step& s, Side& side, auto x, auto out) {
      LocalExpertRunner experts(s.backend, side.weights);
      ASSERT_TRUE(MoeFfnForward(s, 1, side.weights.layer(1).moe, experts, x, out).ok());
    }, "moe ffn");
  }
}

// A mixer given its input in Kda/MlaMixerInputDType (bf16 past decode sizes, as the model's norms
// write it) gives the bits it gives from the fp32 input, which its products round themselves: a
// prefill of 20 tokens, and a decode step of 6 sequences (more rows than the skinny kernel's, so
// the KDA decode path's products take cuBLAS).
TEST_F(CudaLayersTest, MixersTakeTheirInputInTheDtypeTheirProductsRead) {
  using kernels::DType;
  const int64_t d = config_.hidden_size;
  const ModelWeights& w = gpu_side_.weights;
  struct Mixer {
    const char* name;
    DType (*input_dtype)(const kernels::Backend&, const ModelWeights&, int64_t);
    void (*forward)(const Step&, const ModelWeights&, kernels::TensorView, kernels::TensorView);
  };
  const Mixer mixers[] = {
      {"kda", [](const kernels::Backend& b, const ModelWeights& mw, int64_t t) {
         return KdaMixerInputDType(b, mw.layer(0).kda, t); },
       [](const Step& s, const ModelWeights& mw, kernels::TensorView x, kernels::TensorView out) {
         KdaMixerForward(s, 0, mw.layer(0).kda, x, out); }},
      {"mla", [](const kernels::Backend& b, const ModelWeights& mw, int64_t t) {
         return MlaMixerInputDType(b, mw.layer(3).mla, t); },
       [](const Step& s, const ModelWeights& mw, kernels::TensorView x, kernels::TensorView out) {
         MlaMixerForward(s, 3, mw.layer(3).mla, x, out); }},
  };
  for (const Mixer& mixer : mixers) {
    for (const int64_t sequences : {int64_t{1}, int64_t{6}}) {
      const int64_t t = sequences == 1 ? 20 : sequences;
      SCOPED_TRACE(::testing::Message() << mixer.name << ", " << sequences << " sequences, " << t << " tokens");
      EXPECT_EQ(mixer.input_dtype(cpu_, cpu_side_.weights, t), DType::kF32) << "the CPU reads fp32";
      const DType dtype = mixer.input_dtype(*cuda_, w, t);
      ASSERT_EQ(dtype, DType::kBF16);
      EXPECT_EQ(mixer.input_dtype(*cuda_, w, 4), DType::kF32) << "decode sizes take the skinny kernel";
      const std::vector<float> x = testing::RandomVector(t * d, 11);
      std::vector<std::vector<float>> outputs;
      for (const DType input : {DType::kF32, dtype}) {
        std::vector<std::unique_ptr<SequenceState>> states;
        std::vector<StepSequence> seqs;
        for (int64_t i = 0; i < sequences; ++i) {
          states.push_back(std::make_unique<SequenceState>(config_, *cuda_, 0, config_.num_layers, 1));
        }
        for (int64_t i = 0; i < sequences; ++i) {
          seqs.push_back({{i * (t / sequences), t / sequences}, states[i].get()});
        }
        kernels::Tensor in = cuda_->Allocate(t, d, input);
        if (input == DType::kBF16) {
          cuda_->Upload(testing::ToBF16(x).data(), in.view());
        } else {
          cuda_->Upload(x.data(), in.view());
        }
        kernels::Tensor out = cuda_->Allocate(t, d, DType::kF32);
        const Step step{*cuda_, config_, options_, seqs, t};
        mixer.forward(step, w, in.view(), out.view());
        std::vector<float> host(t * d);
        cuda_->Download(out.view(), host.data());
        outputs.push_back(host);
      }
      ASSERT_FALSE(cuda_->TakeFailure().failed());
      EXPECT_EQ(outputs[0], outputs[1]);
    }
  }
}

}  // namespace
}  // namespace deltaserve::model
