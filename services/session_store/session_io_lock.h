// A session's I/O lock: writers (put, delete, copy into) exclusive, readers shared, so disk I/O
// for one session is ordered while the store's own lock stays free. Lock order: a session's
// I/O lock before the store's mutex, never the other way round.
#pragma once

#include <memory>
#include <utility>

#include "absl/synchronization/mutex.h"

namespace deltaserve::services {

// Shared by the index entry and the calls waiting for it, so that a waiter can tell that the
// session it waited for was removed (the entry no longer points at this object).
struct SessionIo {
  absl::Mutex mu;
};

// Holds a SessionIo locked, shared or exclusive; releases it when destroyed. Movable.
class SessionIoLock {
 public:
  SessionIoLock() = default;
  // Blocks until the lock is held.
  SessionIoLock(std::shared_ptr<SessionIo> io, bool exclusive)
      : io_(std::move(io)), exclusive_(exclusive) {
    if (exclusive_) {
      io_->mu.WriterLock();
    } else {
      io_->mu.ReaderLock();
    }
  }
  SessionIoLock(SessionIoLock&& other) noexcept
      : io_(std::move(other.io_)), exclusive_(other.exclusive_) {}
  SessionIoLock& operator=(SessionIoLock&& other) noexcept {
    if (this != &other) {
      Release();
      io_ = std::move(other.io_);
      exclusive_ = other.exclusive_;
    }
    return *this;
  }
  SessionIoLock(const SessionIoLock&) = delete;
  SessionIoLock& operator=(const SessionIoLock&) = delete;
  ~SessionIoLock() { Release(); }

  const std::shared_ptr<SessionIo>& io() const { return io_; }

 private:
  void Release() {
    if (io_ == nullptr) return;
    if (exclusive_) {
      io_->mu.WriterUnlock();
    } else {
      io_->mu.ReaderUnlock();
    }
    io_.reset();
  }

  std::shared_ptr<SessionIo> io_;
  bool exclusive_ = false;
};

}  // namespace deltaserve::services
