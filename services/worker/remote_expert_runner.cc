#include "services/worker/remote_expert_runner.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"

namespace deltaserve::services {

RemoteExpertRunner::RemoteExpertRunner(kernels::Backend& backend, std::vector<ExpertShardLink> shards,
                                       int64_t hidden_size)
    : backend_(backend), shards_(std::move(shards)), hidden_size_(hidden_size) {}

absl::Status RemoteExpertRunner::RunExperts(int64_t layer, kernels::TensorView x,
                                            kernels::TensorView expert_ids,
                                            kernels::TensorView slot_out) {
  const int64_t n = x.rows;
  const int64_t k = expert_ids.cols;
  if (x.cols != hidden_size_ || slot_out.cols != hidden_size_ || slot_out.rows != n * k ||
      expert_ids.rows != n) {
    return absl::InternalError(absl::StrCat("layer ", layer, ": expert tensors of mismatched shapes"));
  }
  std::vector<float> host_x(static_cast<size_t>(n * hidden_size_));
  std::vector<int32_t> host_ids(static_cast<size_t>(n * k));
  std::vector<float> host_out(static_cast<size_t>(n * k * hidden_size_));
  backend_.Download(x, host_x.data());
  backend_.Download(expert_ids, host_ids.data());
  auto ids_of = [&](int64_t t) { return host_ids.data() + t * k; };
  auto x_row = [&](int64_t t) { return host_x.data() + t * hidden_size_; };
  struct Call {
    std::vector<int64_t> tokens;  // batch rows sent to this shard
    internal::v1::RunExpertsRequest request;
    internal::v1::RunExpertsResponse response;
    absl::Status status;
  };
  for (int64_t t = 0; t < n; ++t) {
    const int32_t* ids = ids_of(t);
    for (int64_t slot = 0; slot < k; ++slot) {
      const bool held = std::any_of(shards_.begin(), shards_.end(), [&](const ExpertShardLink& shard) {
        return ids[slot] >= shard.expert_begin && ids[slot] < shard.expert_end;
      });
      if (!held) {
        return absl::InternalError(absl::StrCat("layer ", layer, ": no expert shard holds expert ", ids[slot]));
      }
    }
  }
  std::vector<Call> calls(shards_.size());
  for (size_t s = 0; s < shards_.size(); ++s) {
    const ExpertShardLink& shard = shards_[s];
    Call& call = calls[s];
    for (int64_t t = 0; t < n; ++t) {
      const int32_t* ids = ids_of(t);
      if (std::any_of(ids, ids + k, [&](int32_t id) {
            return id >= shard.expert_begin && id < shard.expert_end;
          })) {
        call.tokens.push_back(t);
      }
    }
    if (call.tokens.empty()) continue;
    call.request.set_layer(layer);
    call.request.set_num_tokens(static_cast<int64_t>(call.tokens.size()));
    call.request.set_top_k(k);
    call.request.set_expert_begin(shard.expert_begin);
    call.request.set_expert_end(shard.expert_end);
    if (shard.model_fingerprint != 0) call.request.set_model_fingerprint(shard.model_fingerprint);
    std::string* hidden = call.request.mutable_hidden();
    hidden->resize(call.tokens.size() * hidden_size_ * sizeof(float));
    for (size_t i = 0; i < call.tokens.size(); ++i) {
      std::memcpy(hidden->data() + i * hidden_size_ * sizeof(float), x_row(call.tokens[i]),
                  hidden_size_ * sizeof(float));
      const int32_t* ids = ids_of(call.tokens[i]);
      for (int64_t slot = 0; slot < k; ++slot) call.request.add_expert_ids(ids[slot]);
    }
  }
  std::vector<std::thread> threads;
  for (size_t s = 0; s < shards_.size(); ++s) {
    if (calls[s].tokens.empty()) continue;
    threads.emplace_back([&, s] {
      calls[s].status = shards_[s].channel->RunExperts(calls[s].request, &calls[s].response);
    });
  }
  for (std::thread& thread : threads) thread.join();

  for (size_t s = 0; s < shards_.size(); ++s) {
    const ExpertShardLink& shard = shards_[s];
    Call& call = calls[s];
    if (call.tokens.empty()) continue;
    if (!call.status.ok()) {
      return absl::Status(call.status.code(),
                          absl::StrCat("expert shard ", shard.expert_begin, "-", shard.expert_end - 1,
                                       ", layer ", layer, ": ", call.status.message()));
    }
    const std::string& out = call.response.slot_outputs();
    size_t offset = 0;
    const size_t row_bytes = hidden_size_ * sizeof(float);
    for (int64_t t : call.tokens) {
      const int32_t* ids = ids_of(t);
      for (int64_t slot = 0; slot < k; ++slot) {
        if (ids[slot] < shard.expert_begin || ids[slot] >= shard.expert_end) continue;
        if (offset + row_bytes > out.size()) {
          return absl::DataLossError(absl::StrCat("expert shard ", shard.expert_begin, "-",
                                                  shard.expert_end - 1, " returned ", out.size(),
                                                  " bytes, too few for its slots"));
        }
        std::memcpy(host_out.data() + (t * k + slot) * hidden_size_, out.data() + offset, row_bytes);
        offset += row_bytes;
      }
    }
    if (offset != out.size()) {
      return absl::DataLossError(absl::StrCat("expert shard ", shard.expert_begin, "-",
                                              shard.expert_end - 1, " returned ", out.size(),
                                              " bytes, expected ", offset));
    }
  }
  backend_.Upload(host_out.data(), slot_out);
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
