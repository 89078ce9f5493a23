#include "services/worker/remote_expert_runner.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <string>

#include "absl/strings/str_cat.h"

namespace deltaserve::services {

namespace {

std::string ShardName(const ExpertShardLink& shard) {
  return absl::StrCat("expert shard ", shard.expert_begin, "-", shard.expert_end - 1);
}

bool Holds(const ExpertShardLink& shard, int32_t id) { return id >= shard.expert_begin && id < shard.expert_end; }

}  // namespace

std::vector<ExpertCall> PlanExpertCalls(const int32_t* ids, int64_t n, int64_t k, int64_t begin, int64_t end,
                                        int64_t max_rows) {
  std::vector<ExpertCall> calls;
  for (int64_t t = 0; t < n; ++t) {
    const int32_t* row = ids + t * k;
    const auto held =
        static_cast<size_t>(std::count_if(row, row + k, [&](int32_t id) { return id >= begin && id < end; }));
    if (held == 0) continue;
    const auto limit = static_cast<size_t>(max_rows);
    if (calls.empty() ||
        (max_rows > 0 && (calls.back().tokens.size() + 1 > limit || calls.back().slots.size() + held > limit))) {
      calls.emplace_back();
    }
    calls.back().tokens.push_back(t);
    for (int64_t slot = 0; slot < k; ++slot) {
      if (row[slot] >= begin && row[slot] < end) calls.back().slots.push_back(t * k + slot);
    }
  }
  return calls;
}

RemoteExpertRunner::RemoteExpertRunner(kernels::Backend& backend, std::vector<ExpertShardLink> shards,
                                       int64_t hidden_size, LinkPathMetrics* metrics)
    : backend_(backend), shards_(std::move(shards)), hidden_size_(hidden_size), metrics_(metrics) {}

absl::Status RemoteExpertRunner::RunExperts(int64_t layer, kernels::TensorView x,
                                            kernels::TensorView expert_ids,
                                            kernels::TensorView slot_out) {
  const int64_t n = x.rows;
  const int64_t k = expert_ids.cols;
  const int64_t hidden = hidden_size_;
  if (x.cols != hidden || slot_out.cols != hidden || slot_out.rows != n * k || expert_ids.rows != n) {
    return absl::InternalError(absl::StrCat("layer ", layer, ": expert tensors of mismatched shapes"));
  }
  if (n == 0) return absl::OkStatus();
  std::vector<int32_t> host_ids(static_cast<size_t>(n * k));
  backend_.Download(expert_ids, host_ids.data());
  for (int32_t id : host_ids) {
    if (std::none_of(shards_.begin(), shards_.end(), [&](const ExpertShardLink& shard) { return Holds(shard, id); })) {
      return absl::InternalError(absl::StrCat("layer ", layer, ": no expert shard holds expert ", id));
    }
  }

  // Each shard's calls: over its NCCL link where that is up and free, in calls its buffer takes;
  // otherwise one call with the rows as bytes. Every slot's output lands in row row_of_slot[slot]
  // of `returned`, a call's rows together.
  struct ShardCalls {
    std::unique_lock<std::mutex> link_hold;  // held while the calls use the shard's link
    std::vector<ExpertCall> calls;
    internal::v1::RunExpertsResponse bytes_response;  // a bytes call's answer
    absl::Status status;
  };
  std::vector<ShardCalls> work(shards_.size());
  std::vector<int64_t> row_of_slot(static_cast<size_t>(n * k), -1);
  int64_t rows = 0;
  size_t rounds = 0;
  bool any_bytes = false;
  for (size_t s = 0; s < shards_.size(); ++s) {
    const ExpertShardLink& shard = shards_[s];
    ShardCalls& w = work[s];
    if (shard.nccl != nullptr) w.link_hold = shard.nccl->TryHold(k, hidden);
    const int64_t max_rows = w.link_hold.owns_lock() ? shard.nccl->link().RowsWithin(hidden) : 0;
    w.calls = PlanExpertCalls(host_ids.data(), n, k, shard.expert_begin, shard.expert_end, max_rows);
    if (w.calls.empty() && w.link_hold.owns_lock()) w.link_hold.unlock();
    any_bytes = any_bytes || (!w.link_hold.owns_lock() && !w.calls.empty());
    rounds = std::max(rounds, w.calls.size());
    for (const ExpertCall& call : w.calls) {
      for (int64_t slot : call.slots) row_of_slot[static_cast<size_t>(slot)] = rows++;
    }
  }
  if (rows != n * k) {
    return absl::InternalError(absl::StrCat("layer ", layer, ": the expert shards hold ", rows, " of ", n * k,
                                            " slots: their ranges overlap"));
  }
  // The rows on the host, for calls that carry them as bytes: downloaded once, when first needed.
  std::vector<float> host_x;
  const auto download_x = [&] {
    if (!host_x.empty()) return;
    host_x.resize(static_cast<size_t>(n * hidden));
    backend_.Download(x, host_x.data());
  };
  if (any_bytes) download_x();
  kernels::Tensor returned = backend_.Allocate(n * k, hidden, kernels::DType::kF32);
  for (size_t round = 0; round < rounds; ++round) {
    bool over_links = false;
    for (size_t s = 0; s < shards_.size(); ++s) {
      if (!work[s].link_hold.owns_lock() || round >= work[s].calls.size()) continue;
      const std::vector<int64_t>& tokens = work[s].calls[round].tokens;
      backend_.GatherRows(x, tokens, shards_[s].nccl->Rows(static_cast<int64_t>(tokens.size()), hidden));
      over_links = true;
    }
    if (over_links) backend_.Synchronize();  // the rows are in the links' buffers
    std::vector<std::function<void()>> calls;
    for (size_t s = 0; s < shards_.size(); ++s) {
      if (round >= work[s].calls.size()) continue;
      calls.emplace_back([&, s, round] {
        ShardCalls& w = work[s];
        const ExpertCall& call = w.calls[round];
        internal::v1::RunExpertsRequest request = Request(shards_[s], layer, k, call, host_ids.data());
        w.status = w.link_hold.owns_lock()
                       ? CallOverLink(shards_[s], std::move(request), call)
                       : CallWithBytes(shards_[s], std::move(request), call, host_x.data(), w.bytes_response);
      });
    }
    threads_.RunAll(calls);
    // A shard that answered a call on its link with FAILED_PRECONDITION (it lost the link: it was
    // restarted, or dropped it at its limit; or it refused the call) gets the rows as bytes, now
    // and for the rest of the layer: running a call again changes nothing on the shard.
    for (size_t s = 0; s < shards_.size(); ++s) {
      ShardCalls& w = work[s];
      if (round >= w.calls.size() || !w.link_hold.owns_lock() ||
          w.status.code() != absl::StatusCode::kFailedPrecondition) {
        continue;
      }
      w.link_hold.unlock();  // the link is broken by now, or unused by the refused call
      download_x();
      w.status = CallWithBytes(shards_[s], Request(shards_[s], layer, k, w.calls[round], host_ids.data()),
                               w.calls[round], host_x.data(), w.bytes_response);
    }
    for (size_t s = 0; s < shards_.size(); ++s) {
      const absl::Status& status = work[s].status;
      if (!status.ok()) {
        return absl::Status(status.code(),
                            absl::StrCat(ShardName(shards_[s]), ", layer ", layer, ": ", status.message()));
      }
    }
    for (size_t s = 0; s < shards_.size(); ++s) {
      if (round >= work[s].calls.size()) continue;
      const std::vector<int64_t>& slots = work[s].calls[round].slots;
      const int64_t count = static_cast<int64_t>(slots.size());
      const kernels::TensorView into = returned.view().Rows(row_of_slot[static_cast<size_t>(slots.front())], count);
      if (work[s].link_hold.owns_lock()) {
        backend_.Copy(shards_[s].nccl->Rows(count, hidden), into);
      } else {
        backend_.Upload(work[s].bytes_response.slot_outputs().data(), into);
      }
    }
    if (over_links) backend_.Synchronize();  // the links' buffers are free again
  }
  backend_.GatherRows(returned.view(), row_of_slot, slot_out);
  return absl::OkStatus();
}

internal::v1::RunExpertsRequest RemoteExpertRunner::Request(const ExpertShardLink& shard, int64_t layer, int64_t k,
                                                            const ExpertCall& call, const int32_t* ids) const {
  internal::v1::RunExpertsRequest request;
  request.set_layer(layer);
  request.set_num_tokens(static_cast<int64_t>(call.tokens.size()));
  request.set_top_k(k);
  request.set_expert_begin(shard.expert_begin);
  request.set_expert_end(shard.expert_end);
  if (shard.model_fingerprint != 0) request.set_model_fingerprint(shard.model_fingerprint);
  for (int64_t t : call.tokens) {
    for (int64_t slot = 0; slot < k; ++slot) request.add_expert_ids(ids[t * k + slot]);
  }
  return request;
}

absl::Status RemoteExpertRunner::CallOverLink(const ExpertShardLink& shard, internal::v1::RunExpertsRequest request,
                                              const ExpertCall& call) {
  NcclLink& link = shard.nccl->link();
  const size_t row_bytes = static_cast<size_t>(hidden_size_) * sizeof(float);
  const int64_t expected = static_cast<int64_t>(call.slots.size());
  request.set_hidden_link(shard.nccl->id());
  if (absl::Status status = link.StartSend(call.tokens.size() * row_bytes); !status.ok()) {
    if (link.broken() && metrics_ != nullptr) metrics_->LinkFailed();
    return status;
  }
  shard.nccl->CountSent();
  // The shard receives the rows, runs them and sends the outputs back before it answers, so an
  // answer that is not that ends the waits here (and breaks the link).
  internal::v1::RunExpertsResponse response;
  absl::Status remote, transfers;
  std::atomic<bool> failed{false};
  const NcclLink::GiveUp give_up = [&] { return failed.load(); };
  threads_.RunAll({[&] {
                     remote = shard.channel->RunExperts(request, &response);
                     if (!remote.ok() || response.slot_rows() != expected) failed = true;
                   },
                   [&] {
                     transfers = link.FinishSend(give_up);
                     if (transfers.ok()) transfers = link.Receive(call.slots.size() * row_bytes, give_up);
                   }});
  if (remote.ok() && response.slot_rows() != expected) {
    link.Break();
    remote =
        absl::DataLossError(absl::StrCat("returned ", response.slot_rows(), " rows over NCCL, expected ", expected));
  }
  if (link.broken() && metrics_ != nullptr) metrics_->LinkFailed();
  if (!remote.ok()) return remote;
  if (!transfers.ok()) return transfers;
  ++calls_over_nccl_;
  if (metrics_ != nullptr) metrics_->Went(true);
  return absl::OkStatus();
}

absl::Status RemoteExpertRunner::CallWithBytes(const ExpertShardLink& shard, internal::v1::RunExpertsRequest request,
                                               const ExpertCall& call, const float* x,
                                               internal::v1::RunExpertsResponse& response) {
  const size_t row_bytes = static_cast<size_t>(hidden_size_) * sizeof(float);
  std::string* hidden = request.mutable_hidden();
  hidden->resize(call.tokens.size() * row_bytes);
  for (size_t i = 0; i < call.tokens.size(); ++i) {
    std::memcpy(hidden->data() + i * row_bytes, x + call.tokens[i] * hidden_size_, row_bytes);
  }
  if (absl::Status status = shard.channel->RunExperts(request, &response); !status.ok()) return status;
  const size_t expected = call.slots.size() * row_bytes;
  if (response.slot_outputs().size() != expected) {
    return absl::DataLossError(absl::StrCat("returned ", response.slot_outputs().size(), " bytes, expected ",
                                            expected));
  }
  ++calls_as_bytes_;
  if (metrics_ != nullptr) metrics_->Went(false);
  return absl::OkStatus();
}

absl::Status CheckShardCoverage(std::vector<ExpertShardLink> shards, int64_t num_experts) {
  std::sort(shards.begin(), shards.end(), [](const ExpertShardLink& a, const ExpertShardLink& b) {
    return a.expert_begin < b.expert_begin;
  });
  int64_t next = 0;
  for (const ExpertShardLink& shard : shards) {
    if (shard.expert_begin != next) {
      return absl::InvalidArgumentError(absl::StrCat(
          shard.expert_begin > next ? "no expert shard holds experts " : "expert shards overlap at ",
          next, shard.expert_begin > next ? absl::StrCat("-", shard.expert_begin - 1) : ""));
    }
    next = shard.expert_end;
  }
  if (next != num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("no expert shard holds experts ", next, "-",
                                                   num_experts - 1));
  }
  return absl::OkStatus();
}

}  // namespace deltaserve::services
