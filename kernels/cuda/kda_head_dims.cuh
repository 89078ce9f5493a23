// The KDA head dims the recurrent kernels are built for: each is a template parameter (the state
// column or tile lives in registers), so a launcher dispatches on it at run time.
#pragma once

#include <cstdint>
#include <type_traits>

namespace deltaserve::kernels::cuda {

// Calls launch(std::integral_constant<int, D>{}) for the head dims the kernels are built for;
// false for any other.
template <typename Launch>
bool WithKdaHeadDim(int64_t head_dim, Launch launch) {
  switch (head_dim) {
    case 16: launch(std::integral_constant<int, 16>{}); return true;
    case 24: launch(std::integral_constant<int, 24>{}); return true;
    case 32: launch(std::integral_constant<int, 32>{}); return true;
    case 48: launch(std::integral_constant<int, 48>{}); return true;
    case 64: launch(std::integral_constant<int, 64>{}); return true;
    case 96: launch(std::integral_constant<int, 96>{}); return true;
    case 128: launch(std::integral_constant<int, 128>{}); return true;
    default: return false;
  }
}

}  // namespace deltaserve::kernels::cuda
