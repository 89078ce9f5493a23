// Wall-clock time for session timestamps and TTLs, behind an interface so tests inject time.
#pragma once

#include <cstdint>

namespace deltaserve::services {

// Thread-safe: implementations may be called from any thread.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowUnixMs() const = 0;
};

// The system clock. The returned object lives for the whole program.
Clock& SystemClock();

}  // namespace deltaserve::services
