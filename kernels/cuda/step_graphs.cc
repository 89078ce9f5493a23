#include "kernels/cuda/step_graphs.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace deltaserve::kernels::cuda {
namespace {

constexpr size_t kArenaAlign = 256;    // as cudaMallocAsync's
constexpr size_t kStagingAlign = 16;   // 16-byte loads of descriptors
constexpr int kFailuresBeforeDisabling = 3;
constexpr size_t kEntriesPerGraph = 4;  // shapes remembered per graph kept

size_t AlignUp(size_t bytes, size_t align) { return (bytes + align - 1) / align * align; }

}  // namespace

StepGraphs::StepGraphs(cudaStream_t main, MemoryLimit* memory, int max_graphs,
                       std::function<bool(size_t)> may_keep)
    : main_(main), memory_(memory), max_graphs_(std::max(max_graphs, 1)), may_keep_(std::move(may_keep)) {
  if (cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking) != cudaSuccess) {
    capture_stream_ = nullptr;
  }
}

StepGraphs::~StepGraphs() {
  for (auto& entry : entries_) Release(*entry);
  FreeRetired();
  if (capture_stream_ != nullptr) cudaStreamDestroy(capture_stream_);
}

int64_t StepGraphs::KeysBucket(int64_t max_keys) {
  int64_t bucket = 4096;
  while (bucket < max_keys) bucket *= 2;
  return bucket;
}

StepGraphs::Entry& StepGraphs::FindOrAdd(const StepGraphKey& key) {
  for (auto& entry : entries_) {
    if (entry->key == key) return *entry;
  }
  // A server meets many shapes over its life: past a bound, the least recently used is forgotten
  // (its graph and buffers too), to be measured again if it comes back.
  if (entries_.size() >= kEntriesPerGraph * static_cast<size_t>(max_graphs_)) {
    auto oldest = std::min_element(entries_.begin(), entries_.end(), [](const auto& a, const auto& b) {
      return a->last_used < b->last_used;
    });
    Release(**oldest);
    entries_.erase(oldest);
  }
  entries_.push_back(std::make_unique<Entry>());
  entries_.back()->key = key;
  return *entries_.back();
}

bool StepGraphs::Begin(const StepGraphKey& key) {
  if (capture_stream_ == nullptr || !region_.try_lock()) return false;
  FreeRetired();
  StepGraphKey bucketed = key;
  bucketed.max_keys = KeysBucket(key.max_keys);
  Entry& entry = FindOrAdd(bucketed);
  if (entry.disabled) {
    region_.unlock();
    return false;
  }
  entry.last_used = ++clock_;
  arena_cursor_ = staging_cursor_ = allocation_index_ = upload_index_ = calls_ = segments_launched_ = 0;
  allocations_.clear();
  uploads_.clear();
  broken_.clear();
  if (!entry.measured) {
    mode_ = GraphMode::kMeasure;
  } else if (entry.segments.empty()) {
    if (!PrepareBuffers(entry) ||
        cudaStreamBeginCapture(capture_stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      cudaGetLastError();
      Fail(entry);
      region_.unlock();
      return false;
    }
    capturing_ = true;
    mode_ = GraphMode::kCapture;
  } else {
    // The previous launch has read its staged uploads before they are overwritten.
    if (cudaEventSynchronize(entry.buffers.done) != cudaSuccess) {
      Fail(entry);
      region_.unlock();
      return false;
    }
    mode_ = GraphMode::kReplay;
  }
  entry_ = &entry;
  owner_.store(std::this_thread::get_id(), std::memory_order_release);
  active_.store(true, std::memory_order_release);
  return true;
}

bool StepGraphs::PrepareBuffers(Entry& entry) {
  Buffers& b = entry.buffers;
  if (b.done == nullptr && cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming) != cudaSuccess) {
    b.done = nullptr;
    return false;
  }
  if (b.staging == nullptr && entry.staging_bytes > 0 &&
      cudaMallocHost(&b.staging, entry.staging_bytes) != cudaSuccess) {
    b.staging = nullptr;
    return false;
  }
  if (b.arena == nullptr && entry.arena_bytes > 0) {
    int64_t held = 0;
    if (may_keep_ != nullptr && !may_keep_(entry.arena_bytes)) return false;
    if (!memory_->Reserve(entry.arena_bytes, &held)) return false;
    if (cudaMalloc(&b.arena, entry.arena_bytes) != cudaSuccess) {
      cudaGetLastError();  // an out-of-memory here only means no graph for this shape
      b.arena = nullptr;
    }
    memory_->Settle(b.arena, entry.arena_bytes);
    if (b.arena == nullptr) return false;
    b.arena_bytes = entry.arena_bytes;
    std::lock_guard<std::mutex> lock(arenas_mutex_);
    arenas_[static_cast<const char*>(b.arena)] = b.arena_bytes;
  }
  return true;
}

void StepGraphs::Release(Entry& entry) {
  if (!entry.segments.empty()) {
    if (entry.buffers.done != nullptr) cudaEventSynchronize(entry.buffers.done);
    for (cudaGraphExec_t segment : entry.segments) cudaGraphExecDestroy(segment);
    entry.segments.clear();
  }
  if (entry.buffers.arena != nullptr || entry.buffers.staging != nullptr || entry.buffers.done != nullptr) {
    retired_.push_back(entry.buffers);
  }
  entry.buffers = {};
}

void StepGraphs::FreeRetired() {
  for (Buffers& b : retired_) {
    if (b.done != nullptr) {
      cudaEventSynchronize(b.done);
      cudaEventDestroy(b.done);
    }
    if (b.arena != nullptr) {
      {
        std::lock_guard<std::mutex> lock(arenas_mutex_);
        arenas_.erase(static_cast<const char*>(b.arena));
      }
      memory_->Release(b.arena);
      cudaFree(b.arena);
    }
    if (b.staging != nullptr) cudaFreeHost(b.staging);
  }
  retired_.clear();
}

void StepGraphs::EvictBeyondLimit() {
  while (true) {
    int graphs = 0;
    Entry* oldest = nullptr;
    for (auto& entry : entries_) {
      if (entry->segments.empty()) continue;
      ++graphs;
      if (entry.get() != entry_ && (oldest == nullptr || entry->last_used < oldest->last_used)) {
        oldest = entry.get();
      }
    }
    if (graphs <= max_graphs_ || oldest == nullptr) return;
    Release(*oldest);
  }
}

void StepGraphs::Fail(Entry& entry) {
  failed_.fetch_add(1, std::memory_order_relaxed);
  if (++entry.failures >= kFailuresBeforeDisabling) {
    entry.disabled = true;
    Release(entry);
  }
}

StepGraphs::Outcome StepGraphs::Rerecord(Entry& entry, bool ran) {
  if (ran) cudaEventRecord(entry.buffers.done, main_);  // before its staging is reused
  Release(entry);
  entry.measured = false;
  Fail(entry);
  return ran ? Outcome::kDiverged : Outcome::kNotRun;
}

void StepGraphs::MarkBroken(std::string why) {
  if (broken_.empty()) broken_ = std::move(why);
}

bool StepGraphs::InArena(const void* data) const {
  const auto* p = static_cast<const char*>(data);
  std::lock_guard<std::mutex> lock(arenas_mutex_);
  auto it = arenas_.upper_bound(p);
  if (it == arenas_.begin()) return false;
  --it;
  return p < it->first + it->second;
}

void StepGraphs::Follow(size_t bytes, const std::vector<size_t>& recorded, size_t& index,
                        std::vector<size_t>& recording, const char* what) {
  if (mode_ != GraphMode::kReplay) {
    recording.push_back(bytes);
    return;
  }
  if (index >= recorded.size() || recorded[index] != bytes) {
    MarkBroken(std::string("the step ") + what + " differently from its recording");
  }
  ++index;
}

void* StepGraphs::Allocate(size_t bytes) {
  const size_t aligned = AlignUp(std::max<size_t>(bytes, 1), kArenaAlign);
  Follow(bytes, entry_->allocations, allocation_index_, allocations_, "allocates");
  if (mode_ == GraphMode::kMeasure) {
    arena_cursor_ += aligned;
    return nullptr;
  }
  if (arena_cursor_ + aligned > entry_->buffers.arena_bytes) {
    MarkBroken("the step allocates more than its measured arena");
    return nullptr;
  }
  void* data = static_cast<char*>(entry_->buffers.arena) + arena_cursor_;
  arena_cursor_ += aligned;
  return data;
}

const void* StepGraphs::Stage(const void* host, size_t bytes) {
  const size_t aligned = AlignUp(std::max<size_t>(bytes, 1), kStagingAlign);
  Follow(bytes, entry_->uploads, upload_index_, uploads_, "uploads");
  if (mode_ == GraphMode::kMeasure) {
    staging_cursor_ += aligned;
    return host;
  }
  if (staging_cursor_ + aligned > entry_->staging_bytes) {
    MarkBroken("the step uploads more than its measured staging");
    return host;
  }
  char* staged = static_cast<char*>(entry_->buffers.staging) + staging_cursor_;
  std::memcpy(staged, host, bytes);
  staging_cursor_ += aligned;
  return staged;
}

bool StepGraphs::Issue() {
  switch (mode_) {
    case GraphMode::kNone:
    case GraphMode::kMeasure:
      return true;
    case GraphMode::kCapture:
      if (calls_ > 0 && IsCut(calls_)) CutCapture();
      ++calls_;
      return capturing_;
    case GraphMode::kReplay:
      if (calls_ > 0 && IsCut(calls_)) LaunchNextSegment();
      ++calls_;
      return false;
  }
  return false;
}

void StepGraphs::CutCapture() {
  if (!capturing_) return;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (cudaStreamEndCapture(capture_stream_, &graph) != cudaSuccess || graph == nullptr ||
      cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
    cudaGetLastError();
    MarkBroken("a segment of the step could not be captured");
  } else {
    captured_.push_back(exec);
  }
  if (graph != nullptr) cudaGraphDestroy(graph);
  // Nothing may run for real on the capture stream: without a new capture, calls are not made.
  capturing_ = cudaStreamBeginCapture(capture_stream_, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  if (!capturing_) {
    cudaGetLastError();
    MarkBroken("the capture could not go on");
  }
}

void StepGraphs::LaunchNextSegment() {
  if (!broken_.empty()) return;
  if (segments_launched_ >= entry_->segments.size()) {
    MarkBroken("the step makes more device calls than its recording");
    return;
  }
  if (cudaGraphLaunch(entry_->segments[segments_launched_], main_) != cudaSuccess) {
    cudaGetLastError();
    MarkBroken("a segment of the step graph could not be launched");
    return;
  }
  ++segments_launched_;
}

void StepGraphs::DropCaptured() {
  for (cudaGraphExec_t segment : captured_) cudaGraphExecDestroy(segment);
  captured_.clear();
}

StepGraphs::Outcome StepGraphs::Launch(bool thread_failed) {
  Entry& entry = *entry_;
  const GraphMode mode = mode_;
  mode_ = GraphMode::kNone;
  switch (mode) {
    case GraphMode::kNone:
      return Outcome::kNotRun;
    case GraphMode::kMeasure:
      // The work ran as usual; a failed or unrecordable step teaches nothing about its sizes.
      if (thread_failed) return Outcome::kRan;
      if (!broken_.empty()) {
        Fail(entry);
        return Outcome::kRan;
      }
      entry.arena_bytes = arena_cursor_;
      entry.staging_bytes = staging_cursor_;
      entry.measured = true;
      measured_.fetch_add(1, std::memory_order_relaxed);
      return Outcome::kRan;
    case GraphMode::kCapture: {
      CutCapture();  // the last segment
      if (capturing_) {
        cudaGraph_t empty = nullptr;
        cudaStreamEndCapture(capture_stream_, &empty);
        if (empty != nullptr) cudaGraphDestroy(empty);
        capturing_ = false;
      }
      if (thread_failed || !broken_.empty()) {
        DropCaptured();
        Fail(entry);
        return Outcome::kNotRun;
      }
      entry.segments = std::move(captured_);
      captured_.clear();
      entry.allocations = std::move(allocations_);
      entry.uploads = std::move(uploads_);
      entry.calls = calls_;
      break;
    }
    case GraphMode::kReplay:
      if (thread_failed || !broken_.empty() || allocation_index_ != entry.allocations.size() ||
          upload_index_ != entry.uploads.size() || calls_ != entry.calls) {
        return Rerecord(entry, segments_launched_ > 0);  // the shape did not repeat as recorded
      }
      break;
  }
  for (size_t i = mode == GraphMode::kReplay ? segments_launched_ : 0; i < entry.segments.size(); ++i) {
    if (cudaGraphLaunch(entry.segments[i], main_) != cudaSuccess) {
      cudaGetLastError();
      return Rerecord(entry, i > 0);
    }
  }
  cudaEventRecord(entry.buffers.done, main_);
  (mode == GraphMode::kCapture ? captured_count_ : replayed_).fetch_add(1, std::memory_order_relaxed);
  EvictBeyondLimit();
  return Outcome::kRan;
}

void StepGraphs::End() {
  if (mode_ == GraphMode::kCapture) {  // abandoned without Launch
    if (capturing_) {
      cudaGraph_t graph = nullptr;
      cudaStreamEndCapture(capture_stream_, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      cudaGetLastError();
      capturing_ = false;
    }
    DropCaptured();
    Fail(*entry_);
  }
  mode_ = GraphMode::kNone;
  entry_ = nullptr;
  active_.store(false, std::memory_order_release);
  owner_.store(std::thread::id(), std::memory_order_release);
  region_.unlock();
}

StepGraphs::Counts StepGraphs::counts() const {
  return {measured_.load(), captured_count_.load(), replayed_.load(), failed_.load()};
}

}  // namespace deltaserve::kernels::cuda
