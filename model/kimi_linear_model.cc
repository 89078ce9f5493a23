#include "model/kimi_linear_model.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <set>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/status_macros.h"
#include "model/device_failure.h"
#include "model/layers/ffn.h"
#include "model/layers/kda_mixer.h"
#include "model/layers/mla_mixer.h"
#include "model/state/state_codec.h"

namespace deltaserve::model {

using kernels::DType;
using kernels::Tensor;
using kernels::TensorView;

absl::StatusOr<std::unique_ptr<KimiLinearModel>> KimiLinearModel::Load(
    const std::string& dir, kernels::Backend& backend, const ModelOptions& options) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  return Load(std::move(checkpoint), backend, options);
}

absl::StatusOr<std::unique_ptr<KimiLinearModel>> KimiLinearModel::Load(
    std::unique_ptr<Checkpoint> checkpoint, kernels::Backend& backend, const ModelOptions& options) {
  if (!options.scope.load_dense) {
    return absl::InvalidArgumentError("a model needs its dense weights (load_dense)");
  }
  if (!options.scope.load_routed_experts && options.experts == nullptr) {
    return absl::InvalidArgumentError(
        "routed experts are neither loaded nor reachable: pass an ExpertRunner for them");
  }
  DS_ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(*checkpoint, backend, options.scope));
  DS_RETURN_IF_ERROR(model::TakeDeviceFailure(backend, "while loading the weights"));
  return std::unique_ptr<KimiLinearModel>(
      new KimiLinearModel(std::move(checkpoint), backend, std::move(weights), options));
}

KimiLinearModel::KimiLinearModel(std::unique_ptr<Checkpoint> checkpoint, kernels::Backend& backend,
                                 ModelWeights weights, const ModelOptions& options)
    : checkpoint_(std::move(checkpoint)),
      backend_(backend),
      weights_(std::move(weights)),
      options_(options),
      local_experts_(backend, weights_),
      experts_(options.experts != nullptr ? options.experts : &local_experts_),
      step_graphs_(options.step_graphs) {
  // Never reused, unlike an address: a backend may outlive this model and serve the next one.
  static std::atomic<uint64_t> instances{0};
  instance_ = ++instances;
  fingerprint_ = checkpoint_->ModelFingerprint();
}

int64_t KimiLinearModel::max_context() const {
  const int64_t limit = config().max_position_embeddings;
  return limit > 0 ? limit : std::numeric_limits<int64_t>::max();
}

std::unique_ptr<SequenceState> KimiLinearModel::NewState() const {
  // The first state alive may take the room left for steps: there is no other to give memory back.
  auto state = std::make_unique<SequenceState>(config(), backend_, layer_begin(), layer_end(), fingerprint_,
                                               kDefaultLatentPageRows, /*leave_step_room=*/*live_states_ > 0);
  state->CountIn(live_states_);
  return state;
}

std::string KimiLinearModel::SnapshotState(const SequenceState& state) const {
  return EncodeState(state);
}

std::string KimiLinearModel::SnapshotStateUnsealed(const SequenceState& state) const {
  return EncodeStateUnsealed(state);
}

absl::StatusOr<std::unique_ptr<SequenceState>> KimiLinearModel::RestoreState(std::string_view snapshot,
                                                                             bool checksum_verified) const {
  absl::StatusOr<std::unique_ptr<SequenceState>> state =
      DecodeState(snapshot, config(), backend_, fingerprint_, layer_begin(), layer_end(), checksum_verified);
  if (state.ok()) (*state)->CountIn(live_states_);
  return state;
}

absl::Status KimiLinearModel::Validate(std::span<const SequenceInput> batch,
                                      size_t hidden_in_size, bool has_device_ids) const {
  if (batch.empty()) return absl::InvalidArgumentError("a forward step needs at least one sequence");
  const KimiLinearConfig& c = config();
  size_t total_tokens = 0;
  std::set<const SequenceState*> seen;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceInput& seq = batch[i];
    if (seq.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " has no new tokens"));
    }
    for (size_t p = 0; p < seq.tokens.size(); ++p) {
      if (seq.tokens[p] < 0 || seq.tokens[p] >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", i, ": token id ", seq.tokens[p], " at position ", p,
                         " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    if (seq.state == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " has no state"));
    }
    if (seq.state->model_fingerprint() != fingerprint_ || seq.state->layer_begin() != layer_begin() ||
        seq.state->layer_end() != layer_end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, ": its state belongs to another model or layer range"));
    }
    if (!seen.insert(seq.state).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, ": the same state appears twice in one step"));
    }
    const int64_t length = static_cast<int64_t>(seq.tokens.size());
    total_tokens += seq.tokens.size();
    if (!seq.logit_positions.empty() && !is_last_stage()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, ": logits come from the last stage only"));
    }
    if (seq.argmax && seq.draw.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " asks for both an argmax and a draw"));
    }
    if (seq.draw.has_value() && seq.logit_positions.size() > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, " asks for a draw at ", seq.logit_positions.size(), " positions; one at most"));
    }
    if (!seq.penalties.empty() && !seq.argmax && !seq.draw.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", i, " has penalties for the device but asks for neither an argmax nor a draw"));
    }
    std::unordered_set<int32_t> penalised;
    for (const kernels::LogitPenalty& penalty : seq.penalties) {
      if (penalty.token < 0 || penalty.token >= config().vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": penalised token id ", penalty.token,
                                                       " is outside the vocabulary [0, ", config().vocab_size, ")"));
      }
      if (!penalised.insert(penalty.token).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", i, ": token ", penalty.token, " has two penalty entries; one at most"));
      }
    }
    if ((seq.argmax || seq.draw.has_value()) && !seq.logit_positions.empty() && !has_device_ids) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, " asks for ids from the device, but the step has no place for them"));
    }
    if (seq.state->num_tokens() > max_context() - length) {
      return absl::OutOfRangeError(absl::StrCat(
          "sequence ", i, ": ", seq.state->num_tokens(), " tokens of history plus ", length,
          " new exceed the model's context of ", max_context()));
    }
    for (int64_t position : seq.logit_positions) {
      if (position < 0 || position >= length) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": logit position ",
                                                       position, " is outside its ", length,
                                                       " new tokens"));
      }
    }
  }
  const size_t expected_hidden = is_first_stage() ? 0 : total_tokens * c.hidden_size;
  if (hidden_in_size != expected_hidden) {
    return absl::InvalidArgumentError(absl::StrCat("the step's input holds ", hidden_in_size,
                                                   " values; layers [", layer_begin(), ", ",
                                                   layer_end(), ") expect ", expected_hidden));
  }
  return absl::OkStatus();
}

absl::Status KimiLinearModel::Forward(std::span<const SequenceInput> batch,
                                      std::vector<float>& logits, std::vector<int32_t>* device_ids) {
  if (!is_first_stage() || !is_last_stage()) {
    return absl::FailedPreconditionError("Forward needs the whole model; use ForwardStage");
  }
  return ForwardStage(batch, {}, logits, device_ids);
}

absl::Status KimiLinearModel::ForwardStage(std::span<const SequenceInput> batch,
                                           std::span<const float> hidden_in,
                                           std::vector<float>& out, std::vector<int32_t>* device_ids,
                                           const StageDeviceRows* device_rows) {
  const KimiLinearConfig& c = config();
  const kernels::TensorView device_in = device_rows != nullptr ? device_rows->in : kernels::TensorView{};
  const kernels::TensorView device_out = device_rows != nullptr ? device_rows->out : kernels::TensorView{};
  for (const kernels::TensorView& rows : {device_in, device_out}) {
    if (rows.data != nullptr && (rows.cols != c.hidden_size || rows.dtype != kernels::DType::kF32)) {
      return absl::InvalidArgumentError(absl::StrCat("a stage's device rows are [", rows.rows, ", ", rows.cols,
                                                     "] of another dtype or width than fp32 [T, ", c.hidden_size, "]"));
    }
  }
  const size_t inputs = device_in.data != nullptr ? static_cast<size_t>(device_in.rows * device_in.cols)
                                                  : hidden_in.size();
  DS_RETURN_IF_ERROR(Validate(batch, inputs, device_ids != nullptr));

  std::vector<int32_t> ids;
  std::vector<StepSequence> seqs;
  LogitRows logit_rows;
  for (const SequenceInput& seq : batch) {
    const int64_t begin = static_cast<int64_t>(ids.size());
    ids.insert(ids.end(), seq.tokens.begin(), seq.tokens.end());
    seqs.push_back({{begin, static_cast<int64_t>(seq.tokens.size())}, seq.state});
    for (int64_t position : seq.logit_positions) {
      const auto row = static_cast<int64_t>(logit_rows.rows.size());
      if (seq.draw.has_value()) {
        logit_rows.drawn.push_back(row);
        logit_rows.draws.push_back(*seq.draw);
      } else if (!seq.argmax) {
        logit_rows.kept.push_back(row);
      }
      for (kernels::LogitPenalty penalty : seq.penalties) {
        penalty.row = row;
        logit_rows.penalties.push_back(penalty);
      }
      logit_rows.rows.push_back(begin + position);
      logit_rows.argmax.push_back(seq.argmax);
      logit_rows.num_argmax += seq.argmax ? 1 : 0;
    }
  }
  if (!logit_rows.penalties.empty()) {
    size_t padded = 64;
    while (padded < logit_rows.penalties.size()) padded *= 2;
    logit_rows.penalties.resize(padded, kernels::LogitPenalty{0, -1});
  }
  const int64_t t = static_cast<int64_t>(ids.size());
  if (device_out.data != nullptr && !is_last_stage() && device_out.rows != t) {
    return absl::InvalidArgumentError(absl::StrCat("the stage's device output holds ", device_out.rows,
                                                   " rows; the step has ", t));
  }
  if (device_in.data != nullptr && device_in.rows != t) {
    return absl::InvalidArgumentError(absl::StrCat("the stage's device input holds ", device_in.rows,
                                                   " rows; the step has ", t));
  }
  // Device input rows may be overwritten once the step returns (the next transfer into a link's
  // buffer): on every path the step's reads of them finish first. Declared before the step's
  // graph, so that this runs after the graph has ended.
  struct FinishReadsOnReturn {
    kernels::Backend& backend;
    bool armed;
    ~FinishReadsOnReturn() {
      if (armed) backend.Synchronize();
    }
  } finish_reads{backend_, device_in.data != nullptr};
  DS_RETURN_IF_ERROR(ReserveLatentRows(seqs));
  const Step step{backend_, c, options_.layers, seqs, t};
  // A device failure past this point fails the step with its sequences' states partly advanced:
  // the caller drops those sequences, whose states the skipped work left behind.
  constexpr std::string_view kDuring = "in a step";

  std::unique_ptr<kernels::StepGraph> graph = BeginStepGraph(seqs, logit_rows, device_in.data);
  const std::vector<int64_t> cached_rows = graph != nullptr ? CachedLatentRows(seqs) : std::vector<int64_t>{};
  StepResult result;
  absl::Status status = RunStep(step, ids, hidden_in, device_in, logit_rows, result);
  if (graph != nullptr && !graph->Launch()) {
    // Not recorded or replayed, so nothing of it ran: issue it again without a graph.
    result = StepResult();
    graph.reset();
    RestoreCachedLatentRows(seqs, cached_rows);
    status = RunStep(step, ids, hidden_in, device_in, logit_rows, result);
  }
  if (!status.ok()) {
    (void)TakeDeviceFailure(kDuring);  // the step failed anyway; the next one starts clean
    return status;
  }
  for (const SequenceInput& seq : batch) seq.state->AppendTokens(seq.tokens);
  if (!is_last_stage() && device_out.data != nullptr) {
    backend_.Copy(result.values.view(), device_out);
    backend_.Synchronize();
    return Stepped(model::TakeDeviceFailure(backend_, kDuring));
  }
  if (!is_last_stage()) {
    out.resize(static_cast<size_t>(t * c.hidden_size));
    backend_.Download(result.values.view(), out.data());
    return Stepped(model::TakeDeviceFailure(backend_, kDuring));
  }
  out.assign(logit_rows.kept.size() * static_cast<size_t>(c.vocab_size), 0.0f);
  if (!logit_rows.kept.empty()) backend_.Download(result.values.view(), out.data());
  if (device_ids != nullptr) device_ids->clear();
  if (logit_rows.num_argmax > 0 || !logit_rows.drawn.empty()) {
    std::vector<int32_t> argmax(logit_rows.num_argmax > 0 ? logit_rows.rows.size() : 0);
    std::vector<int32_t> drawn(logit_rows.drawn.size());
    if (!argmax.empty()) backend_.Download(result.argmax.view(), argmax.data());
    if (!drawn.empty()) backend_.Download(result.drawn.view(), drawn.data());
    for (size_t r = 0, d = 0; r < logit_rows.rows.size(); ++r) {
      if (d < drawn.size() && logit_rows.drawn[d] == static_cast<int64_t>(r)) {
        device_ids->push_back(drawn[d++]);
      } else if (logit_rows.argmax[r]) {
        device_ids->push_back(argmax[r]);
      }
    }
  }
  return Stepped(model::TakeDeviceFailure(backend_, kDuring));
}

absl::Status KimiLinearModel::RunStep(const Step& step, std::span<const int32_t> ids,
                                      std::span<const float> hidden_in, kernels::TensorView device_in,
                                      const LogitRows& logit_rows, StepResult& result) {
  const KimiLinearConfig& c = config();
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int64_t t = step.num_tokens;
  Tensor hidden = backend_.Allocate(t, c.hidden_size, DType::kF32);
  Tensor normed = backend_.Allocate(t, c.hidden_size, DType::kF32);
  Tensor mixed = backend_.Allocate(t, c.hidden_size, DType::kF32);
  if (is_first_stage()) {
    backend_.Embed(ids, weights_.embed, hidden.view());
  } else if (device_in.data != nullptr) {
    backend_.Copy(device_in, hidden.view());
  } else {
    backend_.Upload(hidden_in.data(), hidden.view());
  }
  // Each residual add and the norm after it are one AddRmsNorm. A mixer's input feeds only its
  // products: the norm writes it in the dtype they read (bf16 on the GPU past decode sizes, into
  // the fp32 buffer's first half), so no product rounds a copy of it.
  const auto mixer_input = [&](int64_t layer) {
    const LayerWeights& w = weights_.layer(layer);
    const DType dtype =
        c.IsKda(layer) ? KdaMixerInputDType(backend_, w.kda, t) : MlaMixerInputDType(backend_, w.mla, t);
    return kernels::MakeView(normed.view().data, dtype, t, c.hidden_size);
  };
  if (layer_begin() < layer_end()) {
    backend_.RmsNorm(hidden.view(), weights_.layer(layer_begin()).input_norm, eps, mixer_input(layer_begin()));
  }
  for (int64_t layer = layer_begin(); layer < layer_end(); ++layer) {
    const LayerWeights& w = weights_.layer(layer);
    if (c.IsKda(layer)) {
      KdaMixerForward(step, layer, w.kda, mixer_input(layer), mixed.view());
    } else {
      MlaMixerForward(step, layer, w.mla, mixer_input(layer), mixed.view());
    }
    backend_.AddRmsNorm(hidden.view(), mixed.view(), w.post_norm, eps, normed.view());
    if (c.IsMoe(layer)) {
      DS_RETURN_IF_ERROR(MoeFfnForward(step, layer, w.moe, *experts_, normed.view(), mixed.view()));
    } else {
      DenseFfnForward(backend_, w.dense, normed.view(), mixed.view());
    }
    if (layer + 1 < layer_end()) {
      backend_.AddRmsNorm(hidden.view(), mixed.view(), weights_.layer(layer + 1).input_norm, eps,
                          mixer_input(layer + 1));
    } else {
      backend_.Add(hidden.view(), mixed.view());
    }
  }
  if (!is_last_stage()) {
    result.values = std::move(hidden);
    return absl::OkStatus();
  }
  const auto rows = static_cast<int64_t>(logit_rows.rows.size());
  if (rows == 0) return absl::OkStatus();
  Tensor selected = backend_.Allocate(rows, c.hidden_size, DType::kF32);
  backend_.GatherRows(hidden.view(), logit_rows.rows, selected.view());
  backend_.RmsNorm(selected.view(), weights_.final_norm, eps, selected.view());
  Tensor logits = backend_.Allocate(rows, c.vocab_size, DType::kF32);
  backend_.MatMul(selected.view(), weights_.lm_head, logits.view());
  backend_.ApplyPenalties(logits.view(), logit_rows.penalties);
  if (logit_rows.num_argmax > 0) {
    result.argmax = backend_.Allocate(rows, 1, DType::kI32);
    backend_.ArgmaxRows(logits.view(), result.argmax.view());
  }
  const auto drawn = static_cast<int64_t>(logit_rows.drawn.size());
  if (drawn > 0) {
    Tensor picked = backend_.Allocate(drawn, c.vocab_size, DType::kF32);
    backend_.GatherRows(logits.view(), logit_rows.drawn, picked.view());
    result.drawn = backend_.Allocate(drawn, 1, DType::kI32);
    backend_.SampleRows(picked.view(), logit_rows.draws, result.drawn.view());
  }
  const auto kept = static_cast<int64_t>(logit_rows.kept.size());
  if (kept == rows) {
    result.values = std::move(logits);
  } else if (kept > 0) {
    result.values = backend_.Allocate(kept, c.vocab_size, DType::kF32);
    backend_.GatherRows(logits.view(), logit_rows.kept, result.values.view());
  }
  return absl::OkStatus();
}

std::unique_ptr<kernels::StepGraph> KimiLinearModel::BeginStepGraph(std::span<const StepSequence> seqs,
                                                                    const LogitRows& logit_rows,
                                                                    const void* hidden_source) {
  // Decode steps only: one token per sequence, local experts (a remote expert call is not a
  // device operation), and attention whose buffers do not grow with the history.
  if (!step_graphs_ || experts_ != &local_experts_ ||
      options_.layers.mla_form == MlaFormChoice::kExpanded) {
    return nullptr;
  }
  int64_t max_keys = 0;
  for (const StepSequence& seq : seqs) {
    if (seq.rows.length != 1) return nullptr;
    max_keys = std::max(max_keys, seq.state->num_tokens() + 1);
  }
  const kernels::StepGraphKey key{instance_, static_cast<int64_t>(seqs.size()),
                                  static_cast<int64_t>(seqs.size()),
                                  static_cast<int64_t>(logit_rows.rows.size()), logit_rows.num_argmax,
                                  static_cast<int64_t>(logit_rows.drawn.size()), max_keys,
                                  static_cast<int64_t>(logit_rows.penalties.size()),
                                  reinterpret_cast<uintptr_t>(hidden_source)};
  return backend_.BeginStepGraph(key);
}

absl::Status KimiLinearModel::ReserveLatentRows(std::span<const StepSequence> seqs) const {
  // Sequences alone (no other state alive) may take the room left for steps: no other could
  // give memory back.
  const bool leave_step_room = *live_states_ > static_cast<int64_t>(seqs.size());
  const bool short_of_pages = !GrowLatentPages(seqs, /*ahead=*/0, leave_step_room);
  constexpr std::string_view kDuring = "reserving the step's latent cache pages";
  absl::Status status = TakeDeviceFailure(kDuring);
  if (status.ok() && short_of_pages) {
    status = DeviceMemoryError(
        absl::StrCat(std::string(backend_.name()), " device memory ran out ", std::string(kDuring)));
  }
  if (DeviceMemoryRanOut(status)) status.SetPayload(kStatesUnchangedPayload, absl::Cord());
  return status;
}

absl::Status KimiLinearModel::ReserveLatentPages(std::span<SequenceState* const> states,
                                                 std::span<const int64_t> rows, int64_t ahead) const {
  DS_CHECK(states.size() == rows.size());
  std::vector<StepSequence> seqs(states.size());
  for (size_t i = 0; i < states.size(); ++i) {
    seqs[i].state = states[i];
    seqs[i].rows.length = rows[i];
  }
  DS_RETURN_IF_ERROR(ReserveLatentRows(seqs));
  // Pages ahead could take room a step needs: before this model's first step the backend does
  // not know that room, and a step may need more than steps before it. They are taken only
  // where another state is alive, in this reservation or not, that the router could preempt then
  // (a sequence alone fails for good).
  const bool alone = *live_states_ <= 1;
  if (ahead > 0 && stepped_ && !alone && !GrowLatentPages(seqs, ahead, /*leave_step_room=*/true)) {
    (void)TakeDeviceFailure("reserving latent cache pages ahead");  // what did not fit is left out
  }
  return absl::OkStatus();
}

bool KimiLinearModel::GrowLatentPages(std::span<const StepSequence> seqs, int64_t ahead, bool leave_step_room) const {
  for (int64_t layer = layer_begin(); layer < layer_end(); ++layer) {
    if (config().IsKda(layer)) continue;
    for (const StepSequence& seq : seqs) {
      seq.state->ReserveLatent(layer, seq.rows.length + ahead, leave_step_room);
      const MlaLayerState& cache = seq.state->mla(layer);
      if (cache.capacity() < cache.num_cached + seq.rows.length + ahead) return false;
    }
  }
  return true;
}

int64_t KimiLinearModel::LatentRowsHeld(const SequenceState& state) const {
  int64_t held = std::numeric_limits<int64_t>::max();
  for (int64_t layer = layer_begin(); layer < layer_end(); ++layer) {
    if (!config().IsKda(layer)) held = std::min(held, state.mla(layer).capacity());
  }
  return held;
}

std::vector<int64_t> KimiLinearModel::CachedLatentRows(std::span<const StepSequence> seqs) const {
  std::vector<int64_t> rows;
  for (int64_t layer = layer_begin(); layer < layer_end(); ++layer) {
    if (config().IsKda(layer)) continue;
    for (const StepSequence& seq : seqs) rows.push_back(seq.state->mla(layer).num_cached);
  }
  return rows;
}

void KimiLinearModel::RestoreCachedLatentRows(std::span<const StepSequence> seqs,
                                              std::span<const int64_t> rows) const {
  size_t i = 0;
  for (int64_t layer = layer_begin(); layer < layer_end(); ++layer) {
    if (config().IsKda(layer)) continue;
    for (const StepSequence& seq : seqs) seq.state->mla(layer).num_cached = rows[i++];
  }
}

absl::Status KimiLinearModel::Stepped(absl::Status status) {
  if (status.ok()) stepped_ = true;
  return status;
}

absl::Status KimiLinearModel::TakeDeviceFailure(std::string_view during) const {
  return model::TakeDeviceFailure(backend_, during);
}

}  // namespace deltaserve::model
