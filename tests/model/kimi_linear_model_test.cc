// Engine properties on the public fixture: a sequence's results do not depend on its batch,
// continuing from a state (in memory or restored from a snapshot) equals one pass, and bad input
// is refused before any state changes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/sampling.h"
#include "model/kimi_linear_model.h"

namespace deltaserve::model {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";

std::vector<int32_t> RandomTokens(size_t n, uint64_t seed, int32_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return tokens;
}

std::vector<int64_t> AllPositions(size_t n) {
  std::vector<int64_t> positions(n);
  for (size_t i = 0; i < n; ++i) positions[i] = static_cast<int64_t>(i);
  return positions;
}

class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loaded = KimiLinearModel::Load(kFixture, backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model_ = std::move(*loaded);
    vocab_ = static_cast<int32_t>(model_->config().vocab_size);
  }

  // Runs `tokens` on `state` and returns the logits of every position.
  std::vector<float> Run(SequenceState& state, std::span<const int32_t> tokens) {
    std::vector<float> logits;
    const SequenceInput input{tokens, &state, AllPositions(tokens.size())};
    EXPECT_TRUE(model_->Forward({&input, 1}, logits).ok());
    return logits;
  }

  kernels::cpu::CpuBackend backend_{{.num_threads = 3}};
  std::unique_ptr<KimiLinearModel> model_;
  int32_t vocab_ = 0;
};

TEST_F(ModelTest, SequenceResultsAreIdenticalAloneOrInAnyBatch) {
  // Each sequence: some history, then this step's new tokens (prefill, decode, or a mix).
  struct Case {
    size_t history;
    size_t fresh;
  };
  const std::vector<Case> cases = {{0, 130}, {20, 1}, {0, 1}, {64, 65}, {7, 3}};
  std::vector<std::vector<int32_t>> histories, news;
  for (size_t i = 0; i < cases.size(); ++i) {
    histories.push_back(RandomTokens(cases[i].history, 100 + i, vocab_));
    news.push_back(RandomTokens(cases[i].fresh, 200 + i, vocab_));
  }
  auto prepared_states = [&] {
    std::vector<std::unique_ptr<SequenceState>> states;
    for (size_t i = 0; i < cases.size(); ++i) {
      states.push_back(model_->NewState());
      if (!histories[i].empty()) Run(*states.back(), histories[i]);
    }
    return states;
  };

  std::vector<std::unique_ptr<SequenceState>> alone_states = prepared_states();
  std::vector<std::vector<float>> alone;
  for (size_t i = 0; i < cases.size(); ++i) alone.push_back(Run(*alone_states[i], news[i]));

  std::vector<std::unique_ptr<SequenceState>> batch_states = prepared_states();
  std::vector<SequenceInput> batch;
  for (size_t i = 0; i < cases.size(); ++i) {
    batch.push_back({news[i], batch_states[i].get(), AllPositions(news[i].size())});
  }
  std::vector<float> batched;
  ASSERT_TRUE(model_->Forward(batch, batched).ok());

  size_t offset = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_EQ(0, std::memcmp(alone[i].data(), batched.data() + offset, alone[i].size() * sizeof(float)))
        << "sequence " << i;
    offset += alone[i].size();
    EXPECT_EQ(model_->SnapshotState(*alone_states[i]), model_->SnapshotState(*batch_states[i]))
        << "state of sequence " << i;
  }
}

TEST_F(ModelTest, ContinuingFromStateEqualsOnePass) {
  const std::vector<int32_t> tokens = RandomTokens(200, 7, vocab_);
  std::unique_ptr<SequenceState> whole_state = model_->NewState();
  const std::vector<float> whole = Run(*whole_state, tokens);

  std::unique_ptr<SequenceState> state = model_->NewState();
  std::vector<float> pieces;
  const size_t cuts[] = {0, 1, 64, 130, 131, 200};
  for (size_t i = 0; i + 1 < std::size(cuts); ++i) {
    const std::vector<float> part =
        Run(*state, std::span<const int32_t>(tokens).subspan(cuts[i], cuts[i + 1] - cuts[i]));
    pieces.insert(pieces.end(), part.begin(), part.end());
  }
  ASSERT_EQ(pieces.size(), whole.size());
  float max_abs = 0;
  for (float v : whole) max_abs = std::max(max_abs, std::fabs(v));
  for (size_t i = 0; i < whole.size(); ++i) {
    // Different chunk boundaries change fp32 rounding only.
    ASSERT_NEAR(pieces[i], whole[i], 1e-5 * max_abs) << i;
  }
  EXPECT_EQ(state->tokens(), tokens);
}

// Pages reserved ahead (a pipeline's later stages, asked by the first) hold the rows asked for,
// and the rows ahead where memory allows and another state is alive, and change nothing else:
// the state's next steps give the logits a fresh state gives.
TEST_F(ModelTest, ReservedLatentPagesHoldTheRowsAndChangeNothingElse) {
  const std::vector<int32_t> tokens = RandomTokens(20, 9, vocab_);
  std::unique_ptr<SequenceState> fresh = model_->NewState();
  const std::vector<float> want = Run(*fresh, tokens);

  std::unique_ptr<SequenceState> reserved = model_->NewState();
  SequenceState* const states[] = {reserved.get()};
  const int64_t rows[] = {300};
  ASSERT_TRUE(model_->ReserveLatentPages(states, rows, /*ahead=*/0).ok());
  int64_t mla_layers = 0;
  for (int64_t layer = 0; layer < model_->config().num_layers; ++layer) {
    if (model_->config().IsKda(layer)) continue;
    ++mla_layers;
    EXPECT_EQ(reserved->mla(layer).capacity(), 2 * kDefaultLatentPageRows) << "layer " << layer;
    EXPECT_EQ(reserved->mla(layer).num_cached, 0) << "layer " << layer;
  }
  EXPECT_GT(mla_layers, 0);
  EXPECT_EQ(model_->LatentRowsHeld(*reserved), 2 * kDefaultLatentPageRows);
  const int64_t more[] = {400};
  ASSERT_TRUE(model_->ReserveLatentPages(states, more, /*ahead=*/256).ok());
  EXPECT_EQ(model_->LatentRowsHeld(*reserved), 3 * kDefaultLatentPageRows);  // 656 rows
  EXPECT_EQ(reserved->num_tokens(), 0);
  EXPECT_EQ(Run(*reserved, tokens), want);
  EXPECT_EQ(model_->SnapshotState(*reserved), model_->SnapshotState(*fresh));

  // A state alone takes no rows ahead (nothing could give their room back to a step).
  fresh.reset();
  const int64_t alone[] = {800};
  ASSERT_TRUE(model_->ReserveLatentPages(states, alone, /*ahead=*/256).ok());
  EXPECT_EQ(model_->LatentRowsHeld(*reserved), 4 * kDefaultLatentPageRows);  // 820 rows
}

TEST_F(ModelTest, RestoredSnapshotContinuesExactlyLikeTheLiveState) {
  const std::vector<int32_t> tokens = RandomTokens(150, 8, vocab_);
  const std::span<const int32_t> head = std::span<const int32_t>(tokens).subspan(0, 100);
  const std::span<const int32_t> tail = std::span<const int32_t>(tokens).subspan(100);
  std::unique_ptr<SequenceState> live = model_->NewState();
  Run(*live, head);
  const std::string snapshot = model_->SnapshotState(*live);
  absl::StatusOr<std::unique_ptr<SequenceState>> restored = model_->RestoreState(snapshot);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ((*restored)->tokens(), live->tokens());
  EXPECT_EQ(Run(*live, tail), Run(**restored, tail));
  EXPECT_EQ(model_->SnapshotState(*live), model_->SnapshotState(**restored));
}

TEST_F(ModelTest, StepsFromSeveralThreadsMatchSequentialSteps) {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<float>> sequential;
  for (uint64_t i = 0; i < 4; ++i) {
    prompts.push_back(RandomTokens(40 + 30 * i, 300 + i, vocab_));
    std::unique_ptr<SequenceState> state = model_->NewState();
    sequential.push_back(Run(*state, prompts.back()));
  }
  std::vector<std::vector<float>> concurrent(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      std::unique_ptr<SequenceState> state = model_->NewState();
      concurrent[i] = Run(*state, prompts[i]);
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(concurrent, sequential);
}

// In one batch: a sequence's logits, another's argmax and a third's draw (Backend::SampleRows);
// the device ids come in batch order and are what the logits of twin sequences give.
TEST_F(ModelTest, DeviceIdsAreTheArgmaxAndTheDrawOfTheLogits) {
  const std::vector<int32_t> prompt = RandomTokens(6, 3, vocab_);
  std::vector<std::unique_ptr<SequenceState>> states, twins;
  for (int i = 0; i < 3; ++i) {
    states.push_back(model_->NewState());
    twins.push_back(model_->NewState());
  }
  const kernels::RowSampling draw{0.9f, 5, 0.8f, 0.0f, 0.6};
  std::vector<SequenceInput> batch = {{prompt, states[0].get(), {5}},
                                      {prompt, states[1].get(), {5}, /*argmax=*/true},
                                      {prompt, states[2].get(), {5}}};
  batch[2].draw = draw;
  std::vector<float> logits, twin_logits;
  std::vector<int32_t> ids;
  ASSERT_TRUE(model_->Forward(batch, logits, &ids).ok());
  ASSERT_EQ(logits.size(), static_cast<size_t>(vocab_));
  ASSERT_EQ(ids.size(), 2u);
  const SequenceInput twin{prompt, twins[0].get(), {5}};
  ASSERT_TRUE(model_->Forward({&twin, 1}, twin_logits).ok());
  EXPECT_EQ(logits, twin_logits);
  const std::vector<float> raw_logits = twin_logits;  // SampleRow overwrites its row
  EXPECT_EQ(ids[0], std::max_element(twin_logits.begin(), twin_logits.end()) - twin_logits.begin());
  std::vector<float> scratch;
  EXPECT_EQ(ids[1], kernels::SampleRow(twin_logits, draw, scratch));

  // With penalties: the argmax and the draw of the penalised logits.
  const std::vector<kernels::LogitPenalty> penalties = {{0, 3, 2, 1.3f, 0.5f, 0.2f}, {0, 7, 0, 0.6f, 0.5f, 0.2f}};
  std::vector<std::unique_ptr<SequenceState>> penalised;
  for (int i = 0; i < 2; ++i) penalised.push_back(model_->NewState());
  std::vector<SequenceInput> with_penalties = {{prompt, penalised[0].get(), {5}, /*argmax=*/true},
                                               {prompt, penalised[1].get(), {5}}};
  with_penalties[1].draw = draw;
  for (SequenceInput& input : with_penalties) input.penalties = penalties;
  ASSERT_TRUE(model_->Forward(with_penalties, logits, &ids).ok());
  ASSERT_EQ(ids.size(), 2u);
  std::vector<float> penalised_logits = raw_logits;
  for (const kernels::LogitPenalty& p : penalties) {
    penalised_logits[p.token] = kernels::PenalizedLogit(penalised_logits[p.token], p);
  }
  EXPECT_EQ(ids[0], std::max_element(penalised_logits.begin(), penalised_logits.end()) - penalised_logits.begin());
  EXPECT_NE(ids[0], std::max_element(raw_logits.begin(), raw_logits.end()) - raw_logits.begin())
      << "the penalties move this argmax (token 7's logit grows by 1 / 0.6)";
  EXPECT_EQ(ids[1], kernels::SampleRow(penalised_logits, draw, scratch));
}

TEST_F(ModelTest, RejectsBadInputWithoutTouchingState) {
  std::unique_ptr<SequenceState> state = model_->NewState();
  Run(*state, RandomTokens(5, 9, vocab_));
  const std::string before = model_->SnapshotState(*state);
  std::vector<float> logits;

  const std::vector<int32_t> out_of_vocab = {1, vocab_};
  const SequenceInput bad_token{out_of_vocab, state.get(), {}};
  absl::Status status = model_->Forward({&bad_token, 1}, logits);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("outside the vocabulary"), std::string::npos) << status;

  const std::vector<int32_t> negative = {-1};
  const SequenceInput bad_negative{negative, state.get(), {}};
  EXPECT_EQ(model_->Forward({&bad_negative, 1}, logits).code(), absl::StatusCode::kInvalidArgument);

  const std::vector<int32_t> ok_tokens = {1, 2};
  const SequenceInput bad_position{ok_tokens, state.get(), {2}};
  EXPECT_EQ(model_->Forward({&bad_position, 1}, logits).code(), absl::StatusCode::kInvalidArgument);

  const SequenceInput empty{{}, state.get(), {}};
  EXPECT_EQ(model_->Forward({&empty, 1}, logits).code(), absl::StatusCode::kInvalidArgument);

  const SequenceInput twice[] = {{ok_tokens, state.get(), {}}, {ok_tokens, state.get(), {}}};
  EXPECT_EQ(model_->Forward(twice, logits).code(), absl::StatusCode::kInvalidArgument);

  // Device ids: argmax and a draw together, a draw at two positions, nowhere to put them.
  std::vector<int32_t> ids;
  SequenceInput both{ok_tokens, state.get(), {1}, /*argmax=*/true};
  both.draw = kernels::RowSampling{};
  EXPECT_EQ(model_->Forward({&both, 1}, logits, &ids).code(), absl::StatusCode::kInvalidArgument);
  SequenceInput two_draws{ok_tokens, state.get(), {0, 1}};
  two_draws.draw = kernels::RowSampling{};
  EXPECT_EQ(model_->Forward({&two_draws, 1}, logits, &ids).code(), absl::StatusCode::kInvalidArgument);
  SequenceInput no_place{ok_tokens, state.get(), {1}};
  no_place.draw = kernels::RowSampling{};
  EXPECT_EQ(model_->Forward({&no_place, 1}, logits).code(), absl::StatusCode::kInvalidArgument);
  // Penalties: only before a device argmax or draw, tokens inside the vocabulary, one per token.
  SequenceInput host_sampled{ok_tokens, state.get(), {1}};
  host_sampled.penalties = {{0, 3, 1, 1.2f, 0.1f, 0.1f}};
  EXPECT_EQ(model_->Forward({&host_sampled, 1}, logits, &ids).code(), absl::StatusCode::kInvalidArgument);
  SequenceInput outside{ok_tokens, state.get(), {1}, /*argmax=*/true};
  outside.penalties = {{0, static_cast<int32_t>(vocab_), 1, 1.2f, 0.1f, 0.1f}};
  EXPECT_EQ(model_->Forward({&outside, 1}, logits, &ids).code(), absl::StatusCode::kInvalidArgument);
  SequenceInput duplicated{ok_tokens, state.get(), {1}, /*argmax=*/true};
  duplicated.penalties = {{0, 3, 1, 1.2f, 0.1f, 0.1f}, {0, 3, 2, 1.2f, 0.1f, 0.1f}};
  EXPECT_EQ(model_->Forward({&duplicated, 1}, logits, &ids).code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(model_->SnapshotState(*state), before);
}

}  // namespace
}  // namespace deltaserve::model
