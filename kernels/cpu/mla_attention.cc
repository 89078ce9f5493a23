#include "kernels/cpu/mla_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "base/check.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"

namespace deltaserve::kernels::cpu {
namespace {

// In-place softmax over scores[0, n).
void Softmax(float* scores, int64_t n) {
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) max_score = std::max(max_score, scores[j]);
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t j = 0; j < n; ++j) scores[j] *= inv;
}

float Dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

struct Shapes {
  explicit Shapes(const MlaParams& p)
      : heads(p.num_heads), rank(p.kv_lora_rank), nope(p.qk_nope_dim), rope(p.qk_rope_dim),
        v(p.v_dim), qk(p.qk_nope_dim + p.qk_rope_dim), kv(p.qk_nope_dim + p.v_dim),
        latent(p.kv_lora_rank + p.qk_rope_dim) {}
  int64_t heads, rank, nope, rope, v, qk, kv, latent;
};

// Query row i of `seq` (absolute position num_cached + i) for head h, expanded form: keys and
// values of head h come from kv_all [L, H*(nope+v)] and the cache's shared k_pe.
void ExpandedHead(const Shapes& s, float scale, const MlaSequence& seq, TensorView q,
                  const float* cache, const std::vector<float>& kv_all, int64_t h, TensorView out) {
  std::vector<float> scores(static_cast<size_t>(seq.num_cached + seq.rows.length));
  for (int64_t i = 0; i < seq.rows.length; ++i) {
    const float* q_row = q.row<float>(seq.rows.begin + i) + h * s.qk;
    const int64_t visible = seq.num_cached + i + 1;
    for (int64_t j = 0; j < visible; ++j) {
      const float* k_nope = kv_all.data() + j * s.heads * s.kv + h * s.kv;
      const float* k_pe = cache + j * s.latent + s.rank;
      scores[j] = (Dot(q_row, k_nope, s.nope) + Dot(q_row + s.nope, k_pe, s.rope)) * scale;
    }
    Softmax(scores.data(), visible);
    float* o = out.row<float>(seq.rows.begin + i) + h * s.v;
    std::fill(o, o + s.v, 0.0f);
    for (int64_t j = 0; j < visible; ++j) {
      const float* value = kv_all.data() + j * s.heads * s.kv + h * s.kv + s.nope;
      for (int64_t c = 0; c < s.v; ++c) o[c] += scores[j] * value[c];
    }
  }
}

// Absorbed form: q_lat = W_UKᵀ q_nope, attention over the latent itself, then W_UV.
void AbsorbedHead(const Shapes& s, float scale, const MlaSequence& seq, TensorView q,
                  const float* cache, const std::vector<float>& kv_b, int64_t h, TensorView out) {
  const float* w_uk = kv_b.data() + h * s.kv * s.rank;  // [nope, rank]
  const float* w_uv = w_uk + s.nope * s.rank;            // [v, rank]
  std::vector<float> q_lat(s.rank), o_lat(s.rank);
  std::vector<float> scores(static_cast<size_t>(seq.num_cached + seq.rows.length));
  for (int64_t i = 0; i < seq.rows.length; ++i) {
    const float* q_row = q.row<float>(seq.rows.begin + i) + h * s.qk;
    std::fill(q_lat.begin(), q_lat.end(), 0.0f);
    for (int64_t n = 0; n < s.nope; ++n) {
      for (int64_t r = 0; r < s.rank; ++r) q_lat[r] += w_uk[n * s.rank + r] * q_row[n];
    }
    const int64_t visible = seq.num_cached + i + 1;
    for (int64_t j = 0; j < visible; ++j) {
      const float* entry = cache + j * s.latent;
      scores[j] = (Dot(q_lat.data(), entry, s.rank) + Dot(q_row + s.nope, entry + s.rank, s.rope)) *
                  scale;
    }
    Softmax(scores.data(), visible);
    std::fill(o_lat.begin(), o_lat.end(), 0.0f);
    for (int64_t j = 0; j < visible; ++j) {
      const float* entry = cache + j * s.latent;
      for (int64_t r = 0; r < s.rank; ++r) o_lat[r] += scores[j] * entry[r];
    }
    float* o = out.row<float>(seq.rows.begin + i) + h * s.v;
    for (int64_t c = 0; c < s.v; ++c) o[c] = Dot(w_uv + c * s.rank, o_lat.data(), s.rank);
  }
}

}  // namespace

void MlaAttention(ThreadPool& pool, const MlaParams& params, TensorView q, TensorView latent,
                  TensorView kv_b, std::span<const MlaSequence> seqs, TensorView out) {
  const Shapes s(params);
  DS_CHECK(q.cols == s.heads * s.qk && latent.cols == s.latent && out.cols == s.heads * s.v);
  DS_CHECK(kv_b.rows == s.heads * s.kv && kv_b.cols == s.rank);

  for (const MlaSequence& seq : seqs) {
    for (int64_t i = 0; i < seq.rows.length; ++i) {
      std::memcpy(seq.latent_cache + (seq.num_cached + i) * s.latent,
                  latent.row<float>(seq.rows.begin + i), sizeof(float) * s.latent);
    }
  }

  const bool any_absorbed = std::any_of(seqs.begin(), seqs.end(), [](const MlaSequence& seq) {
    return seq.form == MlaForm::kAbsorbed;
  });
  std::vector<float> kv_b_f32;
  if (any_absorbed) {
    kv_b_f32.resize(static_cast<size_t>(kv_b.numel()));
    LoadAllAsF32(kv_b, kv_b_f32.data());
  }
  // Expanded sequences: per-head keys and values of the whole history, [L, H*(nope+v)].
  std::vector<std::vector<float>> kv_all(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const MlaSequence& seq = seqs[i];
    if (seq.form != MlaForm::kExpanded) continue;
    const int64_t length = seq.num_cached + seq.rows.length;
    kv_all[i].resize(static_cast<size_t>(length * s.heads * s.kv));
    TensorView cache_latent{seq.latent_cache, DType::kF32, length, s.rank, s.latent};
    MatMul(pool, cache_latent, kv_b, MakeView(kv_all[i].data(), DType::kF32, length, s.heads * s.kv));
  }

  const int64_t num_seqs = static_cast<int64_t>(seqs.size());
  pool.ParallelFor(num_seqs * s.heads, [&](int64_t task) {
    const int64_t index = task / s.heads;
    const int64_t h = task % s.heads;
    const MlaSequence& seq = seqs[index];
    if (seq.form == MlaForm::kExpanded) {
      ExpandedHead(s, params.scale, seq, q, seq.latent_cache, kv_all[index], h, out);
    } else {
      AbsorbedHead(s, params.scale, seq, q, seq.latent_cache, kv_b_f32, h, out);
    }
  });
}

}  // namespace deltaserve::kernels::cpu
