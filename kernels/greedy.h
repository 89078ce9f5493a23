// The greedy token of a logits row, with the rules every sampling path shares: the largest value,
// the lowest id on ties; none (-1) for a row a sampler rejects (a NaN or +inf anywhere, or nothing
// but -inf, -inf alone being a mask). Backend::ArgmaxRows' definition and the host sampler use it;
// the CUDA argmax kernel follows the same rules.
#pragma once

#include <cstdint>
#include <span>

namespace deltaserve::kernels {

int64_t GreedyArgmax(std::span<const float> row);

}  // namespace deltaserve::kernels
