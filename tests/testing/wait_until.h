// Polls a condition that another thread (or process) will make true.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

namespace deltaserve::testing {

// True once `done` says so; false if `patience` passes first.
inline bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds patience) {
  const auto until = std::chrono::steady_clock::now() + patience;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace deltaserve::testing
