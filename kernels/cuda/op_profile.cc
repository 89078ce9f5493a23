#include "kernels/cuda/op_profile.h"

#include <algorithm>
#include <cstdio>
#include <utility>

namespace deltaserve::kernels::cuda {

OpProfile::~OpProfile() {
  Collect();
  for (cudaEvent_t event : free_events_) cudaEventDestroy(event);
  if (last_end_ != nullptr) cudaEventDestroy(last_end_);
}

cudaEvent_t OpProfile::TakeEvent() {
  if (free_events_.empty()) {
    cudaEvent_t event = nullptr;
    cudaEventCreate(&event);
    return event;
  }
  cudaEvent_t event = free_events_.back();
  free_events_.pop_back();
  return event;
}

void OpProfile::Begin(const char* op) {
  if (depth_++ > 0) return;
  current_ = op;
  current_start_ = TakeEvent();
  cudaEventRecord(current_start_, stream_);
  host_start_ = std::chrono::steady_clock::now();
}

void OpProfile::End() {
  if (--depth_ > 0) return;
  const double host_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_start_).count();
  cudaEvent_t end = TakeEvent();
  cudaEventRecord(end, stream_);
  Totals& totals = totals_[current_];
  ++totals.calls;
  totals.host_ms += host_ms;
  pending_.push_back({current_, current_start_, end});
  if (pending_.size() >= 4096) Collect();
}

void OpProfile::Collect() {
  if (pending_.empty()) return;
  cudaEventSynchronize(pending_.back().end);
  for (Pending& p : pending_) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, p.start, p.end) == cudaSuccess) totals_[p.op].gpu_ms += ms;
    if (last_end_ != nullptr && cudaEventElapsedTime(&ms, last_end_, p.start) == cudaSuccess) gap_ms_ += ms;
    free_events_.push_back(p.start);
    if (last_end_ != nullptr) free_events_.push_back(last_end_);
    last_end_ = p.end;
  }
  pending_.clear();
}

std::string OpProfile::Table() {
  Collect();
  std::vector<std::pair<std::string, Totals>> rows(totals_.begin(), totals_.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.gpu_ms > b.second.gpu_ms; });
  std::string out = "deltaserve cuda op profile (ms; gpu = between events around each call)\n";
  char line[160];
  std::snprintf(line, sizeof line, "%-18s %10s %12s %12s %10s\n", "op", "calls", "host_ms", "gpu_ms", "gpu_us/call");
  out += line;
  double host = 0, gpu = 0;
  for (const auto& [op, t] : rows) {
    std::snprintf(line, sizeof line, "%-18s %10lld %12.2f %12.2f %10.2f\n", op.c_str(), static_cast<long long>(t.calls),
                  t.host_ms, t.gpu_ms, t.calls > 0 ? 1000.0 * t.gpu_ms / t.calls : 0.0);
    out += line;
    host += t.host_ms;
    gpu += t.gpu_ms;
  }
  std::snprintf(line, sizeof line, "%-18s %10s %12.2f %12.2f\n%-18s %10s %12s %12.2f\n", "total", "", host, gpu,
                "gaps between calls", "", "", gap_ms_);
  out += line;
  return out;
}

}  // namespace deltaserve::kernels::cuda
