// The model's side of Backend::BeginStepGraph, on the CPU: a backend that defers the operations
// of a step graph until Launch (and drops them when it refuses) stands in for CUDA graphs. Decode
// steps are offered a graph keyed by their shape, prefill steps are not, and a refused graph
// leaves the step to run again without one: the logits, the argmax ids (one sequence samples
// greedily on the device) and the states that follow are the bits of a backend without graphs.
#include <algorithm>
#include <functional>
#include <utility>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kimi_linear_model.h"

namespace deltaserve::model {
namespace {

using kernels::Backend;
using kernels::StepGraph;
using kernels::StepGraphKey;
using kernels::Tensor;
using kernels::TensorView;

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";

// Memory is the inner backend's, right away; every other operation issued inside a step graph is
// kept and run at Launch, or dropped when the graph refuses (as a failed recording runs nothing).
class DeferringBackend final : public Backend {
 public:
  explicit DeferringBackend(Backend& inner) : inner_(inner) {}

  // Launch refuses the graphs whose index (counting from 0) is in `refused`.
  std::vector<int> refused;
  std::vector<StepGraphKey> keys;  // of every graph begun

  std::string_view name() const override { return "deferring"; }
  kernels::BackendFailure TakeFailure() override { return inner_.TakeFailure(); }
  std::unique_ptr<StepGraph> BeginStepGraph(const StepGraphKey& key) override {
    const int index = static_cast<int>(keys.size());
    keys.push_back(key);
    recording_ = true;
    return std::make_unique<Graph>(*this, std::find(refused.begin(), refused.end(), index) != refused.end());
  }

  Tensor Allocate(int64_t rows, int64_t cols, kernels::DType dtype) override {
    Tensor inner = inner_.Allocate(rows, cols, dtype);
    // Owned here so that Free comes back through this backend.
    owned_.push_back(std::move(inner));
    return Tensor(this, owned_.back().view().data, dtype, rows, cols);
  }
  // Inside a step graph the memory outlives the deferred operations that use it (as a graph's
  // arena does).
  void Free(void* data) override {
    if (recording_) {
      freed_later_.push_back(data);
      return;
    }
    std::erase_if(owned_, [data](const Tensor& t) { return t.view().data == data; });
  }
  void Zero(TensorView dst) override { Do([=, this] { inner_.Zero(dst); }); }
  void Upload(const void* host, TensorView dst) override {
    std::vector<char> copy(static_cast<const char*>(host),
                           static_cast<const char*>(host) + dst.rows * dst.cols * kernels::DTypeSize(dst.dtype));
    Do([=, this] { inner_.Upload(copy.data(), dst); });
  }
  void Download(TensorView src, void* host) override {
    EXPECT_FALSE(recording_) << "a download inside a step graph";
    inner_.Download(src, host);
  }
  void Copy(TensorView src, TensorView dst) override { Do([=, this] { inner_.Copy(src, dst); }); }
  void GatherRows(TensorView src, std::span<const int64_t> rows, TensorView dst) override {
    Do([=, this, rows = std::vector<int64_t>(rows.begin(), rows.end())] { inner_.GatherRows(src, rows, dst); });
  }
  TensorView AdoptWeight(TensorView host_weight) override { return inner_.AdoptWeight(host_weight); }
  TensorView AdoptWeightF32(TensorView host_weight) override { return inner_.AdoptWeightF32(host_weight); }
  void Embed(std::span<const int32_t> ids, TensorView table, TensorView out) override {
    Do([=, this, ids = std::vector<int32_t>(ids.begin(), ids.end())] { inner_.Embed(ids, table, out); });
  }
  void MatMul(TensorView x, TensorView w, TensorView y) override { Do([=, this] { inner_.MatMul(x, w, y); }); }
  void Add(TensorView acc, TensorView x) override { Do([=, this] { inner_.Add(acc, x); }); }
  void RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) override {
    Do([=, this] { inner_.RmsNorm(x, weight, eps, out); });
  }
  void SwiGlu(TensorView gate, TensorView up, TensorView out) override {
    Do([=, this] { inner_.SwiGlu(gate, up, out); });
  }
  void CausalConvSilu(TensorView x, TensorView weight, std::span<const kernels::ConvSequence> seqs,
                      TensorView out) override {
    Do([=, this, seqs = std::vector(seqs.begin(), seqs.end())] { inner_.CausalConvSilu(x, weight, seqs, out); });
  }
  void KdaAttention(const kernels::KdaInputs& in, std::span<const kernels::KdaSequence> seqs,
                    TensorView out) override {
    Do([=, this, seqs = std::vector(seqs.begin(), seqs.end())] { inner_.KdaAttention(in, seqs, out); });
  }
  void GatedRmsNorm(TensorView x, TensorView gate, TensorView weight, int64_t head_dim, float eps,
                    TensorView out) override {
    Do([=, this] { inner_.GatedRmsNorm(x, gate, weight, head_dim, eps, out); });
  }
  void KdaDecodeStep(const kernels::KdaDecodeInputs& in, std::span<const kernels::KdaDecodeSequence> seqs,
                     TensorView out) override {
    Do([=, this, seqs = std::vector(seqs.begin(), seqs.end())] { inner_.KdaDecodeStep(in, seqs, out); });
  }
  void MlaAttention(const kernels::MlaParams& params, TensorView q, TensorView latent, TensorView kv_b,
                    std::span<const kernels::MlaSequence> seqs, TensorView out) override {
    Do([=, this, seqs = std::vector(seqs.begin(), seqs.end())] {
      inner_.MlaAttention(params, q, latent, kv_b, seqs, out);
    });
  }
  kernels::MlaFormLimits MlaForms(const kernels::MlaParams& params) const override {
    return inner_.MlaForms(params);
  }
  void MoeRoute(TensorView router_logits, TensorView correction_bias, const kernels::MoeRouting& routing,
                TensorView expert_ids, TensorView weights) override {
    Do([=, this] { inner_.MoeRoute(router_logits, correction_bias, routing, expert_ids, weights); });
  }
  void MoeExperts(TensorView x, TensorView expert_ids, std::span<const kernels::ExpertWeights> experts,
                  int64_t first_expert, TensorView slot_out) override {
    Do([=, this] { inner_.MoeExperts(x, expert_ids, experts, first_expert, slot_out); });
  }
  void MoeCombine(TensorView slot_out, TensorView weights, TensorView out) override {
    Do([=, this] { inner_.MoeCombine(slot_out, weights, out); });
  }
  void ArgmaxRows(TensorView x, TensorView ids) override { Do([=, this] { inner_.ArgmaxRows(x, ids); }); }
  void ApplyPenalties(TensorView x, std::span<const kernels::LogitPenalty> penalties) override {
    Do([=, this, penalties = std::vector(penalties.begin(), penalties.end())] { inner_.ApplyPenalties(x, penalties); });
  }

 private:
  class Graph final : public StepGraph {
   public:
    Graph(DeferringBackend& backend, bool refuse) : backend_(backend), refuse_(refuse) {}
    ~Graph() override { backend_.recording_ = false; }
    bool Launch() override {
      backend_.recording_ = false;
      std::vector<std::function<void()>> ops = std::move(backend_.deferred_);
      backend_.deferred_.clear();
      if (!refuse_) {
        for (const auto& op : ops) op();
      }
      for (void* data : std::exchange(backend_.freed_later_, {})) backend_.Free(data);
      return !refuse_;
    }

   private:
    DeferringBackend& backend_;
    bool refuse_;
  };

  void Do(std::function<void()> op) {
    if (recording_) {
      deferred_.push_back(std::move(op));
    } else {
      op();
    }
  }

  Backend& inner_;
  bool recording_ = false;
  std::vector<std::function<void()>> deferred_;
  std::vector<void*> freed_later_;
  std::vector<Tensor> owned_;
};

class StepGraphProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto plain = KimiLinearModel::Load(kFixture, cpu_);
    auto graphed = KimiLinearModel::Load(kFixture, deferring_);
    ASSERT_TRUE(plain.ok() && graphed.ok());
    plain_ = std::move(*plain);
    graphed_ = std::move(*graphed);
  }

  kernels::cpu::CpuBackend cpu_{{.num_threads = 1}};
  DeferringBackend deferring_{cpu_};
  std::unique_ptr<KimiLinearModel> plain_, graphed_;
};

TEST_F(StepGraphProtocolTest, DecodeStepsGoThroughGraphsAndRefusedOnesRunAgain) {
  deferring_.refused = {1, 4, 5};
  const std::vector<std::vector<int32_t>> prompts = {{5, 6, 7, 8, 9}, {10, 11}, {12, 13, 14}};
  std::vector<std::unique_ptr<SequenceState>> plain_states, graphed_states;
  for (const std::vector<int32_t>& prompt : prompts) {
    plain_states.push_back(plain_->NewState());
    graphed_states.push_back(graphed_->NewState());
    const int64_t last = static_cast<int64_t>(prompt.size()) - 1;
    const SequenceInput p{prompt, plain_states.back().get(), {last}};
    const SequenceInput g{prompt, graphed_states.back().get(), {last}};
    std::vector<float> plain_logits, graphed_logits;
    ASSERT_TRUE(plain_->Forward({&p, 1}, plain_logits).ok());
    ASSERT_TRUE(graphed_->Forward({&g, 1}, graphed_logits).ok());
    ASSERT_EQ(plain_logits, graphed_logits);
  }
  EXPECT_TRUE(deferring_.keys.empty()) << "prefill steps are not offered a graph";

  for (int step = 0; step < 7; ++step) {
    SCOPED_TRACE(::testing::Message() << "decode step " << step);
    std::vector<int32_t> tokens = {static_cast<int32_t>(20 + step), 21, 22};
    std::vector<SequenceInput> p, g;
    const size_t batch = step == 3 ? 2 : 3;  // one sequence sits a step out
    for (size_t s = 0; s < batch; ++s) {
      p.push_back({{&tokens[s], 1}, plain_states[s].get(), {0}});
      g.push_back({{&tokens[s], 1}, graphed_states[s].get(), {0}, /*argmax=*/s == 0});
    }
    std::vector<float> plain_logits, graphed_logits;
    std::vector<int32_t> argmax;
    ASSERT_TRUE(plain_->Forward(p, plain_logits).ok());
    ASSERT_TRUE(graphed_->Forward(g, graphed_logits, &argmax).ok());
    // Sequence 0's logits stay on the device; its argmax comes back instead.
    const auto vocab = static_cast<int64_t>(plain_->config().vocab_size);
    ASSERT_EQ(argmax.size(), 1u);
    EXPECT_EQ(argmax[0], std::max_element(plain_logits.begin(), plain_logits.begin() + vocab) - plain_logits.begin());
    ASSERT_EQ(std::vector<float>(plain_logits.begin() + vocab, plain_logits.end()), graphed_logits);
    for (size_t s = 0; s < batch; ++s) {
      ASSERT_EQ(graphed_states[s]->num_tokens(), plain_states[s]->num_tokens());
    }
  }
  ASSERT_EQ(deferring_.keys.size(), 7u);
  const StepGraphKey& batch_of_two = deferring_.keys[3];
  EXPECT_EQ(batch_of_two.tokens, 2);
  EXPECT_EQ(batch_of_two.sequences, 2);
  EXPECT_EQ(batch_of_two.logit_rows, 2);
  EXPECT_EQ(batch_of_two.argmax_rows, 1);
  EXPECT_NE(batch_of_two.caller, 0u);
  // Another model on the same backend records apart.
  auto other = KimiLinearModel::Load(kFixture, deferring_);
  ASSERT_TRUE(other.ok());
  auto other_state = (*other)->NewState();
  std::vector<int32_t> prompt = {5, 6};
  const SequenceInput first{prompt, other_state.get(), {}};
  const SequenceInput second{{&prompt[0], 1}, other_state.get(), {0}};
  std::vector<float> ignored;
  ASSERT_TRUE((*other)->Forward({&first, 1}, ignored).ok());
  ASSERT_TRUE((*other)->Forward({&second, 1}, ignored).ok());
  ASSERT_EQ(deferring_.keys.size(), 8u);
  EXPECT_NE(deferring_.keys.back().caller, batch_of_two.caller);
  deferring_.keys.pop_back();
  EXPECT_EQ(batch_of_two.max_keys, 5 + 3 + 1);  // the longest history (5 + 3 decoded) plus this token
  // The states carry on alike, refused steps included: one more step of all three, in one pass.
  std::vector<int32_t> tokens = {30, 31, 32};
  std::vector<SequenceInput> p, g;
  for (size_t s = 0; s < 3; ++s) {
    p.push_back({{&tokens[s], 1}, plain_states[s].get(), {0}});
    g.push_back({{&tokens[s], 1}, graphed_states[s].get(), {0}});
  }
  std::vector<float> plain_logits, graphed_logits;
  graphed_->set_step_graphs(false);
  ASSERT_TRUE(plain_->Forward(p, plain_logits).ok());
  ASSERT_TRUE(graphed_->Forward(g, graphed_logits).ok());
  EXPECT_EQ(plain_logits, graphed_logits);
  EXPECT_EQ(deferring_.keys.size(), 7u) << "step graphs switched off";
}

}  // namespace
}  // namespace deltaserve::model
