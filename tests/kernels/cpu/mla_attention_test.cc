// Absorbed against expanded MLA, and expanded against attention written out here in double.
#include <algorithm>
#include <cmath>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/testing/paged_latent.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::kernels::cpu {
namespace {

using testing::RandomVector;
using testing::View;

struct MlaCase {
  MlaParams params;
  std::vector<int64_t> cached;   // history per sequence
  std::vector<int64_t> lengths;  // new tokens per sequence
  uint64_t seed;
  int64_t page_rows;             // of the latent caches (their pages shuffled)
};

MlaParams Params(int64_t heads, int64_t rank, int64_t nope, int64_t rope, int64_t v) {
  return {heads, rank, nope, rope, v, 1.0f / std::sqrt(static_cast<float>(nope + rope))};
}

struct MlaRun {
  std::vector<float> out;
  std::vector<std::vector<float>> caches;
};

class MlaFixture {
 public:
  explicit MlaFixture(const MlaCase& c) : c_(c) {
    const MlaParams& p = c.params;
    latent_width_ = p.kv_lora_rank + p.qk_rope_dim;
    for (int64_t n : c.lengths) t_ += n;
    q_ = RandomVector(t_ * p.num_heads * (p.qk_nope_dim + p.qk_rope_dim), c.seed + 1);
    latent_ = RandomVector(t_ * latent_width_, c.seed + 2);
    kv_b_ = testing::ToBF16(RandomVector(p.num_heads * (p.qk_nope_dim + p.v_dim) * p.kv_lora_rank,
                                         c.seed + 3, 0.2f));
    for (size_t i = 0; i < c.cached.size(); ++i) {
      std::vector<float> cache = RandomVector((c.cached[i] + c.lengths[i]) * latent_width_, c.seed + 10 + i);
      histories_.push_back(cache);
    }
  }

  // run.caches: each sequence's cache rows afterwards, in order.
  MlaRun Run(CpuBackend& backend, MlaForm form) {
    MlaRun run;
    std::vector<testing::PageLayout> layouts;
    std::vector<std::vector<float>> buffers;
    std::vector<std::vector<void*>> pages;
    std::vector<MlaSequence> seqs;
    int64_t begin = 0;
    for (size_t i = 0; i < c_.lengths.size(); ++i) {
      layouts.emplace_back(c_.cached[i] + c_.lengths[i], c_.page_rows, latent_width_, c_.seed + 20 + i);
      buffers.push_back(layouts.back().ToBuffer(histories_[i]));
      pages.push_back(layouts.back().Pages(buffers.back().data()));
      seqs.push_back({{begin, c_.lengths[i]}, form, {pages.back().data(), c_.page_rows}, c_.cached[i]});
      begin += c_.lengths[i];
    }
    const MlaParams& p = c_.params;
    run.out.assign(t_ * p.num_heads * p.v_dim, NAN);
    backend.MlaAttention(p, View(q_, t_, p.num_heads * (p.qk_nope_dim + p.qk_rope_dim)),
                         View(latent_, t_, latent_width_),
                         MakeView(kv_b_.data(), DType::kBF16, p.num_heads * (p.qk_nope_dim + p.v_dim),
                                  p.kv_lora_rank),
                         seqs, View(run.out, t_, p.num_heads * p.v_dim));
    for (size_t i = 0; i < c_.lengths.size(); ++i) {
      run.caches.push_back(layouts[i].FromBuffer(buffers[i], c_.cached[i] + c_.lengths[i]));
    }
    return run;
  }

  // Plain causal attention over explicit per-head keys [k_nope | k_pe] and values, in double.
  std::vector<double> Reference(const MlaRun& run) const {
    const MlaParams& p = c_.params;
    const int64_t qk = p.qk_nope_dim + p.qk_rope_dim, kv = p.qk_nope_dim + p.v_dim;
    std::vector<double> out(t_ * p.num_heads * p.v_dim);
    int64_t begin = 0;
    for (size_t s = 0; s < c_.lengths.size(); ++s) {
      const std::vector<float>& cache = run.caches[s];
      const int64_t total = c_.cached[s] + c_.lengths[s];
      for (int64_t h = 0; h < p.num_heads; ++h) {
        // keys/values of every cached row for head h
        std::vector<double> keys(total * qk), values(total * p.v_dim);
        for (int64_t j = 0; j < total; ++j) {
          for (int64_t r = 0; r < kv; ++r) {
            double acc = 0;
            for (int64_t c = 0; c < p.kv_lora_rank; ++c) {
              acc += static_cast<double>(BF16ToF32(kv_b_[(h * kv + r) * p.kv_lora_rank + c])) *
                     cache[j * latent_width_ + c];
            }
            if (r < p.qk_nope_dim) keys[j * qk + r] = acc; else values[j * p.v_dim + r - p.qk_nope_dim] = acc;
          }
          for (int64_t r = 0; r < p.qk_rope_dim; ++r) {
            keys[j * qk + p.qk_nope_dim + r] = cache[j * latent_width_ + p.kv_lora_rank + r];
          }
        }
        for (int64_t i = 0; i < c_.lengths[s]; ++i) {
          const int64_t visible = c_.cached[s] + i + 1;
          std::vector<double> scores(visible);
          double max_score = -1e300;
          for (int64_t j = 0; j < visible; ++j) {
            double dot = 0;
            for (int64_t r = 0; r < qk; ++r) dot += q_[(begin + i) * p.num_heads * qk + h * qk + r] * keys[j * qk + r];
            scores[j] = dot * p.scale;
            max_score = std::max(max_score, scores[j]);
          }
          double sum = 0;
          for (double& sc : scores) sum += (sc = std::exp(sc - max_score));
          for (int64_t c = 0; c < p.v_dim; ++c) {
            double acc = 0;
            for (int64_t j = 0; j < visible; ++j) acc += scores[j] / sum * values[j * p.v_dim + c];
            out[(begin + i) * p.num_heads * p.v_dim + h * p.v_dim + c] = acc;
          }
        }
      }
      begin += c_.lengths[s];
    }
    return out;
  }

  const std::vector<float>& latent() const { return latent_; }
  int64_t latent_width() const { return latent_width_; }

 private:
  MlaCase c_;
  int64_t t_ = 0;
  int64_t latent_width_ = 0;
  std::vector<float> q_, latent_;
  std::vector<uint16_t> kv_b_;
  std::vector<std::vector<float>> histories_;
};

class MlaForms : public ::testing::TestWithParam<MlaCase> {};

TEST_P(MlaForms, AbsorbedAndExpandedMatchPlainAttention) {
  const MlaCase& c = GetParam();
  CpuBackend backend({.num_threads = 3});
  MlaFixture fixture(c);
  const MlaRun expanded = fixture.Run(backend, MlaForm::kExpanded);
  const MlaRun absorbed = fixture.Run(backend, MlaForm::kAbsorbed);
  const std::vector<double> reference = fixture.Reference(expanded);
  for (size_t i = 0; i < reference.size(); ++i) {
    ASSERT_NEAR(expanded.out[i], reference[i], 2e-5) << i;
    ASSERT_NEAR(absorbed.out[i], reference[i], 2e-5) << i;
  }
  // This step's latent rows were appended after each history.
  int64_t begin = 0;
  for (size_t s = 0; s < c.lengths.size(); ++s) {
    for (int64_t i = 0; i < c.lengths[s]; ++i) {
      for (int64_t r = 0; r < fixture.latent_width(); ++r) {
        ASSERT_EQ(expanded.caches[s][(c.cached[s] + i) * fixture.latent_width() + r],
                  fixture.latent()[(begin + i) * fixture.latent_width() + r]);
      }
    }
    begin += c.lengths[s];
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MlaForms,
    ::testing::Values(MlaCase{Params(2, 32, 16, 8, 16), {0, 5, 70}, {20, 1, 3}, 1, 16},
                      MlaCase{Params(3, 40, 20, 12, 28), {0, 0, 129}, {1, 65, 1}, 2, 7},
                      MlaCase{Params(1, 16, 8, 4, 12), {300}, {2}, 3, 1},
                      MlaCase{Params(2, 32, 16, 8, 16), {40, 3}, {5, 1}, 4, 256}));

}  // namespace
}  // namespace deltaserve::kernels::cpu
