// The system wall clock.
#include "services/session_store/clock.h"

#include <chrono>

namespace deltaserve::services {
namespace {

class RealClock final : public Clock {
 public:
  int64_t NowUnixMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace

Clock& SystemClock() {
  static RealClock* const clock = new RealClock();  // trivially destructible handle, never freed
  return *clock;
}

}  // namespace deltaserve::services
