// CUDA graphs for repeated step shapes (Backend::BeginStepGraph). A decode step is ~1,000 small
// launches; recorded once, it replays as a few graph launches without the per-kernel launch
// cost and the gaps it leaves on the GPU. Per key (the step's caller and shape), one region of the
// calling thread at a time goes through:
//   measure  the step runs as usual while its allocations and uploads are counted;
//   capture  allocations come from a device arena of the measured size and uploads from a pinned
//            staging buffer, the work is captured on a stream of its own in segments (cut after
//            the 16th device call, then every 64), instantiated and launched at the end;
//   replay   the operations make no device call: allocations return the same arena addresses,
//            uploads are copied into the same staging offsets (checked against the capture, size
//            by size), and each segment is launched as soon as the host has replayed it, so the
//            GPU runs one segment while the host prepares the next.
// The region is held (other threads' steps run without a graph) until its StepGraph is
// destroyed, so the arena's results stay readable until then.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels/backend.h"
#include "kernels/memory_limit.h"

namespace deltaserve::kernels::cuda {

enum class GraphMode : uint8_t { kNone, kMeasure, kCapture, kReplay };

class StepGraphs {
 public:
  // `main` is the stream graphs are launched on; `max_graphs` bounds the instantiated graphs
  // kept (least recently used dropped first), four times that the keys remembered. A graph's
  // arena, kept as long as the graph, is made only where `may_keep` allows its bytes (null: always).
  StepGraphs(cudaStream_t main, MemoryLimit* memory, int max_graphs,
             std::function<bool(size_t)> may_keep = nullptr);
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  // Starts a region for `key` on the calling thread; false (nothing started) when another
  // thread holds one, the key failed before, or its buffers cannot be allocated.
  bool Begin(const StepGraphKey& key);
  // The calling thread's mode: kNone outside its region and after Launch.
  GraphMode ModeHere() const {
    return active_.load(std::memory_order_acquire) && owner_.load(std::memory_order_acquire) == std::this_thread::get_id()
               ? mode_
               : GraphMode::kNone;
  }
  // The stream a capture records on (the calling thread's work goes there while it captures).
  cudaStream_t capture_stream() const { return capture_stream_; }
  // The power of two (at least 4096) of keys that absorbed MLA attention sizes its launch for:
  // steps of one key share it (StepGraphKey::max_keys is bucketed the same way).
  static int64_t KeysBucket(int64_t max_keys);

  // An allocation inside the region: counted (kMeasure, returns null: allocate as usual), or the
  // next arena address (kCapture, kReplay).
  void* Allocate(size_t bytes);
  // Whether `data` lies in an arena (Free leaves it alone). Any thread.
  bool InArena(const void* data) const;
  // Host bytes uploaded inside the region: the pointer to copy from. kMeasure counts them and
  // returns `host`; kCapture and kReplay copy them to the next staging offset and return it.
  const void* Stage(const void* host, size_t bytes);
  // Before each device call of the calling thread's region: whether to make it (not in a replay,
  // nor once a capture failed). Segments are cut (capture) or launched (replay) here.
  bool Issue();
  // Something in the region cannot be recorded or replayed (a download, a host round trip, a
  // failed call): Launch will not run the recording.
  void MarkBroken(std::string why);

  enum class Outcome : uint8_t {
    kRan,       // the step's work ran (or is queued)
    kNotRun,    // none of it ran: issue it again without a graph
    kDiverged,  // a replay differed from its recording after segments had run: the step failed
  };
  // Ends recording: kMeasure keeps the sizes (the work ran as usual); kCapture ends the capture,
  // instantiates and launches every segment; kReplay checks every size and launches the rest.
  // `thread_failed`: the thread's operations failed inside the region.
  Outcome Launch(bool thread_failed);
  // Gives the region up (after Launch, or instead of it: a capture still open is ended).
  void End();

  // Steps by how they ran, for tests and reports.
  struct Counts {
    int64_t measured = 0, captured = 0, replayed = 0, failed = 0;
  };
  Counts counts() const;

 private:
  struct Buffers {
    void* arena = nullptr;
    size_t arena_bytes = 0;
    void* staging = nullptr;     // pinned host
    cudaEvent_t done = nullptr;  // after the last launch, before staging is rewritten
  };
  struct Entry {
    StepGraphKey key;  // max_keys as its bucket
    bool measured = false;
    bool disabled = false;
    int failures = 0;
    size_t arena_bytes = 0, staging_bytes = 0;
    std::vector<size_t> allocations, uploads;  // sizes, in issue order (from the capture)
    size_t calls = 0;                          // device calls
    Buffers buffers;
    std::vector<cudaGraphExec_t> segments;
    uint64_t last_used = 0;
  };

  Entry& FindOrAdd(const StepGraphKey& key);
  bool PrepareBuffers(Entry& entry);
  // Drops the entry's graph and retires its buffers (freed at the next Begin, once nothing of
  // the step that used them can still hold an arena address); the entry stays.
  void Release(Entry& entry);
  void FreeRetired();
  void EvictBeyondLimit();
  void Fail(Entry& entry);  // counts a failure (disabling a key that keeps failing)
  // A replay or launch that did not hold: the recording is dropped (the shape is measured and
  // recorded again) and the failure counted; `ran`: segments of the step already ran.
  Outcome Rerecord(Entry& entry, bool ran);
  static bool IsCut(size_t call) { return call == 16 || (call > 16 && (call - 16) % 64 == 0); }
  void CutCapture();       // ends the segment being captured and starts the next
  void LaunchNextSegment();
  void DropCaptured();
  // Replay: checks `bytes` against the recording's next size (`recorded[index++]`); otherwise
  // appends it to `recording`.
  void Follow(size_t bytes, const std::vector<size_t>& recorded, size_t& index,
              std::vector<size_t>& recording, const char* what);

  cudaStream_t main_;
  cudaStream_t capture_stream_ = nullptr;
  MemoryLimit* memory_;
  const int max_graphs_;
  const std::function<bool(size_t)> may_keep_;

  std::mutex region_;  // held from Begin to End
  std::atomic<bool> active_{false};
  std::atomic<std::thread::id> owner_{};
  GraphMode mode_ = GraphMode::kNone;
  Entry* entry_ = nullptr;
  size_t arena_cursor_ = 0, staging_cursor_ = 0;
  size_t allocation_index_ = 0, upload_index_ = 0;
  size_t calls_ = 0;
  bool capturing_ = false;                      // the capture stream is capturing
  std::vector<cudaGraphExec_t> captured_;       // segments of this capture
  size_t segments_launched_ = 0;                // of this replay
  std::vector<size_t> allocations_, uploads_;  // of this region (measure, capture)
  std::string broken_;

  std::vector<std::unique_ptr<Entry>> entries_;  // under region_
  std::vector<Buffers> retired_;                 // under region_
  uint64_t clock_ = 0;
  std::atomic<int64_t> measured_{0}, captured_count_{0}, replayed_{0}, failed_{0};

  mutable std::mutex arenas_mutex_;
  std::map<const char*, size_t> arenas_;  // base -> bytes
};

}  // namespace deltaserve::kernels::cuda
