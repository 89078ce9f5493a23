#include "services/transport/nccl_link.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

// Non-blocking communicators (ncclConfig_t, ncclCommGetAsyncError polling) came with NCCL 2.14.
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "the NCCL links need NCCL 2.14 or later"
#endif

namespace deltaserve::services {
namespace {

using Clock = std::chrono::steady_clock;

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  // Not left as the thread's last error, where the backend's next launch check would find it.
  (void)cudaGetLastError();
  return absl::InternalError(absl::StrCat("nccl link: ", what, ": ", cudaGetErrorString(error)));
}

// NCCL's refusals of the setup itself (both sides on one GPU: "Duplicate GPU detected") would
// meet another attempt too: FAILED_PRECONDITION; the rest (the peer, the network) UNAVAILABLE.
absl::Status NcclStatus(ncclResult_t result, ncclComm_t comm, const char* what) {
  const std::string message =
      absl::StrCat("nccl link: ", what, ": ", ncclGetErrorString(result), " (", ncclGetLastError(comm), ")");
  if (result == ncclInvalidUsage || result == ncclInvalidArgument) return absl::FailedPreconditionError(message);
  return absl::UnavailableError(message);
}

// Polls until `done` says so (OK), fails, or the deadline passes. Transfers are announced by the
// call that needs them, so most waits are short: it yields between polls for the first 2 ms (a
// sleep costs a wake-up of ~60 us), then sleeps 50 us between them.
template <typename Done>
absl::Status PollUntil(Clock::time_point deadline, const char* what, Done done) {
  const Clock::time_point spin_until = Clock::now() + std::chrono::milliseconds(2);
  for (;;) {
    bool finished = false;
    if (absl::Status status = done(finished); !status.ok()) return status;
    if (finished) return absl::OkStatus();
    const Clock::time_point now = Clock::now();
    if (now > deadline) return absl::DeadlineExceededError(absl::StrCat("nccl link: ", what, " timed out"));
    if (now < spin_until) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
}

class Link final : public NcclLink {
 public:
  Link(int rank, const NcclLinkOptions& options)
      : device_(options.device), rank_(rank), capacity_(options.capacity_bytes), timeout_(options.timeout) {}

  ~Link() override {
    cudaSetDevice(device_);
    // Abort, not destroy: it never waits for the peer, which may be gone.
    if (comm_ != nullptr) ncclCommAbort(comm_);
    if (done_ != nullptr) cudaEventDestroy(done_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (buffer_ != nullptr) cudaFree(buffer_);
  }

  // `give_up` is the join's only: it may watch a call that ends before the link does.
  absl::Status Open(const ncclUniqueId& id, const GiveUp& give_up) {
    if (absl::Status status = CudaStatus(cudaSetDevice(device_), "select the device"); !status.ok()) return status;
    if (absl::Status status = CudaStatus(cudaMalloc(&buffer_, capacity_), "allocate the buffer"); !status.ok()) {
      buffer_ = nullptr;
      return status;
    }
    if (absl::Status status = CudaStatus(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
        !status.ok()) {
      return status;
    }
    if (absl::Status status = CudaStatus(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "event");
        !status.ok()) {
      return status;
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every wait below is ours, with a deadline
    const ncclResult_t result = ncclCommInitRankConfig(&comm_, 2, id, rank_, &config);
    if (result != ncclSuccess && result != ncclInProgress) return Fail(NcclStatus(result, comm_, "join"));
    const absl::Status status = PollUntil(Clock::now() + timeout_, "join", [&](bool& finished) {
      if (give_up && give_up()) return absl::CancelledError("nccl link: the peer will not join");
      return CommState(finished, "join");
    });
    return status.ok() ? status : Fail(status);
  }

  void* buffer() override { return buffer_; }
  size_t capacity() const override { return capacity_; }
  bool broken() const override { return broken_; }

  // A send's first use of the link sets up its connection, which needs the peer's receive: the
  // call then stays in progress (ncclInProgress) until the peer has posted it, so StartSend does
  // not wait for it; FinishSend does.
  absl::Status StartSend(size_t bytes) override {
    if (absl::Status status = Usable(bytes, "send"); !status.ok()) return status;
    const ncclResult_t result = ncclSend(buffer_, bytes, ncclUint8, 1 - rank_, comm_, stream_);
    if (result != ncclSuccess && result != ncclInProgress) return Fail(NcclStatus(result, comm_, "send"));
    send_pending_ = true;
    send_queued_ = false;
    return result == ncclSuccess ? QueuedSend() : absl::OkStatus();
  }

  absl::Status FinishSend(const GiveUp& give_up) override {
    if (!send_pending_) return absl::FailedPreconditionError("nccl link: no send to finish");
    if (absl::Status status = CudaStatus(cudaSetDevice(device_), "select the device"); !status.ok()) return status;
    const Clock::time_point deadline = Clock::now() + timeout_;
    if (!send_queued_) {
      if (absl::Status status = WaitForComm("send", deadline, give_up); !status.ok()) return status;
      if (absl::Status status = QueuedSend(); !status.ok()) return status;
    }
    send_pending_ = false;
    return WaitForStream("send", deadline, give_up);
  }

  void AbandonSend() override {
    if (!send_pending_) return;
    (void)CudaStatus(cudaSetDevice(device_), "select the device");
    (void)Fail(absl::OkStatus());
  }

  absl::Status ReadBuffer(void* host, size_t bytes) override {
    if (bytes > capacity_) return absl::InvalidArgumentError("nccl link: read past the buffer");
    if (absl::Status status = CudaStatus(cudaSetDevice(device_), "select the device"); !status.ok()) return status;
    return CudaStatus(cudaMemcpy(host, buffer_, bytes, cudaMemcpyDeviceToHost), "read the buffer");
  }

  absl::Status Receive(size_t bytes, const GiveUp& give_up) override {
    if (absl::Status status = Usable(bytes, "receive"); !status.ok()) return status;
    const ncclResult_t result = ncclRecv(buffer_, bytes, ncclUint8, 1 - rank_, comm_, stream_);
    if (result != ncclSuccess && result != ncclInProgress) return Fail(NcclStatus(result, comm_, "receive"));
    const Clock::time_point deadline = Clock::now() + timeout_;
    if (result == ncclInProgress) {
      if (absl::Status status = WaitForComm("receive", deadline, give_up); !status.ok()) return status;
    }
    if (absl::Status status = RecordDone("receive"); !status.ok()) return status;
    return WaitForStream("receive", deadline, give_up);
  }

  void Break() override {
    (void)CudaStatus(cudaSetDevice(device_), "select the device");
    (void)Fail(absl::OkStatus());
  }

 private:
  absl::Status Usable(size_t bytes, const char* what) {
    if (broken_) return absl::UnavailableError(absl::StrCat("nccl link: broken by an earlier failure; no ", what));
    if (send_pending_) return absl::FailedPreconditionError("nccl link: a send is still queued");
    if (bytes == 0 || bytes > capacity_) {
      return absl::InvalidArgumentError(absl::StrCat("nccl link: ", bytes, " bytes to ", what, "; the link takes 1 to ",
                                                     capacity_));
    }
    return CudaStatus(cudaSetDevice(device_), "select the device");
  }

  // Once an operation is on the link's stream: an event behind it.
  absl::Status RecordDone(const char* what) {
    const absl::Status status = CudaStatus(cudaEventRecord(done_, stream_), what);
    return status.ok() ? status : Fail(status);
  }
  absl::Status QueuedSend() {
    if (absl::Status status = RecordDone("send"); !status.ok()) return status;
    send_queued_ = true;
    return absl::OkStatus();
  }

  absl::Status CommState(bool& finished, const char* what) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t result = ncclCommGetAsyncError(comm_, &state);
    if (result != ncclSuccess) return NcclStatus(result, comm_, what);
    if (state != ncclSuccess && state != ncclInProgress) return NcclStatus(state, comm_, what);
    finished = state == ncclSuccess;
    return absl::OkStatus();
  }

  static absl::Status GaveUp(const GiveUp& give_up, const char* what) {
    if (give_up && give_up()) return absl::CancelledError(absl::StrCat("nccl link: the peer gave up the ", what));
    return absl::OkStatus();
  }

  absl::Status WaitForComm(const char* what, Clock::time_point deadline, const GiveUp& give_up) {
    const absl::Status status = PollUntil(deadline, what, [&](bool& finished) {
      if (absl::Status state = CommState(finished, what); !state.ok() || finished) return state;
      return GaveUp(give_up, what);
    });
    return status.ok() ? status : Fail(status);
  }

  absl::Status WaitForStream(const char* what, Clock::time_point deadline, const GiveUp& give_up) {
    const absl::Status status = PollUntil(deadline, what, [&](bool& finished) {
      const cudaError_t query = cudaEventQuery(done_);
      if (query == cudaSuccess) {
        finished = true;
        return absl::OkStatus();
      }
      if (query != cudaErrorNotReady) return CudaStatus(query, what);
      bool comm_idle = false;
      // The peer's failure shows in the communicator's state.
      if (absl::Status state = CommState(comm_idle, what); !state.ok()) return state;
      return GaveUp(give_up, what);
    });
    return status.ok() ? status : Fail(status);
  }

  // Aborts the communicator (its kernels stop waiting for the peer): the link stays broken.
  absl::Status Fail(absl::Status status) {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    broken_ = true;
    send_pending_ = false;
    return status;
  }

  const int device_;
  const int rank_;
  const size_t capacity_;
  const std::chrono::milliseconds timeout_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
  void* buffer_ = nullptr;
  bool broken_ = false;
  bool send_pending_ = false;  // started, not finished or abandoned
  bool send_queued_ = false;   // and on the stream, with done_ behind it
};

}  // namespace

absl::StatusOr<std::string> NcclLink::NewId() {
  ncclUniqueId id;
  if (const ncclResult_t result = ncclGetUniqueId(&id); result != ncclSuccess) {
    return NcclStatus(result, nullptr, "make an id");
  }
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<NcclLink>> NcclLink::Join(const std::string& id, int rank,
                                                        const NcclLinkOptions& options) {
  ncclUniqueId unique;
  if (id.size() != sizeof(unique.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("nccl link: an id of ", id.size(), " bytes; NCCL's has ",
                                                   sizeof(unique.internal)));
  }
  if (rank != 0 && rank != 1) return absl::InvalidArgumentError(absl::StrCat("nccl link: rank ", rank));
  if (options.capacity_bytes == 0) return absl::InvalidArgumentError("nccl link: a buffer of 0 bytes");
  std::memcpy(unique.internal, id.data(), id.size());
  auto link = std::make_unique<Link>(rank, options);
  if (absl::Status status = link->Open(unique, options.give_up); !status.ok()) return status;
  return link;
}

}  // namespace deltaserve::services
