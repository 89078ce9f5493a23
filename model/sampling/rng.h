// Seedable random stream for sampling: splitmix64 expands the seed, xoshiro256** draws.
// Hand-written (no <random> distributions, whose output differs between standard libraries) so
// one seed gives the same tokens on every platform and compiler.
#pragma once

#include <array>
#include <cstdint>

namespace deltaserve::model {

// Advances `state` and returns the next splitmix64 output.
inline uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// xoshiro256** (Blackman and Vigna). Not thread-safe: one per sequence.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    // splitmix64 is a bijection of its counter, so the four words are never all zero.
    for (uint64_t& word : s_) word = SplitMix64(seed);
  }

  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 bits of resolution (the top bits, which are the best in xoshiro).
  double NextUniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

  std::array<uint64_t, 4> s_;
};

}  // namespace deltaserve::model
