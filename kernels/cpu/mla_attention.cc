#include "kernels/cpu/mla_attention.h"

#include <cblas.h>

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

// c (ldc) = alpha · a · bᵀ + beta · c, row-major.
void GemmNT(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
            int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// c (ldc) = a · b + beta · c, row-major.
void GemmNN(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
            float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

// Calls fn(first_row, rows, page) for each page's share of cache rows [0, count).
template <typename Fn>
void ForEachPage(const LatentPages& cache, int64_t count, Fn fn) {
  for (int64_t r0 = 0; r0 < count; r0 += cache.page_rows) {
    fn(r0, std::min(cache.page_rows, count - r0), static_cast<const float*>(cache.pages[r0 / cache.page_rows]));
  }
}

// Cache rows [0, count) into one contiguous [count, width] block.
void Contiguous(const LatentPages& cache, int64_t count, int64_t width, float* rows) {
  ForEachPage(cache, count, [&](int64_t r0, int64_t n, const float* page) {
    std::copy_n(page, n * width, rows + r0 * width);
  });
}

struct Shapes {
  explicit Shapes(const MlaParams& p)
      : heads(p.num_heads), rank(p.kv_lora_rank), nope(p.qk_nope_dim), rope(p.qk_rope_dim),
        v(p.v_dim), qk(p.qk_nope_dim + p.qk_rope_dim), kv(p.qk_nope_dim + p.v_dim),
        latent(p.kv_lora_rank + p.qk_rope_dim) {}
  int64_t heads, rank, nope, rope, v, qk, kv, latent;
};

// Query rows per block of the expanded form: a thread's scores are this many rows of keys, not
// every new row's (512 rows on 262,144 keys would be 512 MB a thread).
constexpr int64_t kExpandedRowBlock = 64;

// Head h of every query of `seq`, expanded form: keys [k_nope ‖ k_pe] and values come from
// kv_all [L, H*(nope+v)] and the shared k_pe of `cache` (the history contiguous, [L, latent]),
// all read in place through strides. The rows go in blocks of kExpandedRowBlock, each over the
// keys its last row sees.
void ExpandedHead(const Shapes& s, float scale, const MlaSequence& seq, TensorView q,
                  const float* cache, const float* kv_all, int64_t h, TensorView out) {
  const int64_t kv_stride = s.heads * s.kv;
  thread_local std::vector<float> scores;
  for (int64_t r0 = 0; r0 < seq.rows.length; r0 += kExpandedRowBlock) {
    const int64_t n = std::min(kExpandedRowBlock, seq.rows.length - r0);
    const int64_t keys = seq.num_cached + r0 + n;
    scores.resize(static_cast<size_t>(n * keys));
    const float* q_rows = q.row<float>(seq.rows.begin + r0) + h * s.qk;
    GemmNT(n, keys, s.nope, scale, q_rows, q.row_stride, kv_all + h * s.kv, kv_stride, 0.0f,
           scores.data(), keys);
    GemmNT(n, keys, s.rope, scale, q_rows + s.nope, q.row_stride, cache + s.rank, s.latent, 1.0f,
           scores.data(), keys);
    for (int64_t i = 0; i < n; ++i) {
      float* row = scores.data() + i * keys;
      const int64_t visible = seq.num_cached + r0 + i + 1;
      Softmax(row, visible);
      std::fill(row + visible, row + keys, 0.0f);  // causal: later positions get no weight
    }
    GemmNN(n, s.v, keys, scores.data(), keys, kv_all + h * s.kv + s.nope, kv_stride, 0.0f,
           out.row<float>(seq.rows.begin + r0) + h * s.v, out.row_stride);
  }
}

// Every head of query i of `seq`, absorbed form: q_lat = W_UKᵀ q_nope per head, then attention
// over the latent cache itself, page by page, for all heads at once, then W_UV.
void AbsorbedQuery(const Shapes& s, float scale, const MlaSequence& seq, TensorView q,
                   const std::vector<float>& kv_b, int64_t i, TensorView out) {
  const int64_t visible = seq.num_cached + i + 1;
  thread_local std::vector<float> q_lat, q_pe, scores, o_lat;
  q_lat.resize(static_cast<size_t>(s.heads * s.rank));
  q_pe.resize(static_cast<size_t>(s.heads * s.rope));
  scores.resize(static_cast<size_t>(s.heads * visible));
  o_lat.resize(static_cast<size_t>(s.heads * s.rank));
  const float* q_row = q.row<float>(seq.rows.begin + i);
  for (int64_t h = 0; h < s.heads; ++h) {
    const float* w_uk = kv_b.data() + h * s.kv * s.rank;  // [nope, rank]
    cblas_sgemv(CblasRowMajor, CblasTrans, s.nope, s.rank, 1.0f, w_uk, s.rank, q_row + h * s.qk, 1,
                0.0f, q_lat.data() + h * s.rank, 1);
    std::copy_n(q_row + h * s.qk + s.nope, s.rope, q_pe.data() + h * s.rope);
  }
  ForEachPage(seq.cache, visible, [&](int64_t r0, int64_t n, const float* page) {
    GemmNT(s.heads, n, s.rank, scale, q_lat.data(), s.rank, page, s.latent, 0.0f, scores.data() + r0,
           visible);
    GemmNT(s.heads, n, s.rope, scale, q_pe.data(), s.rope, page + s.rank, s.latent, 1.0f,
           scores.data() + r0, visible);
  });
  for (int64_t h = 0; h < s.heads; ++h) Softmax(scores.data() + h * visible, visible);
  ForEachPage(seq.cache, visible, [&](int64_t r0, int64_t n, const float* page) {
    GemmNN(s.heads, s.rank, n, scores.data() + r0, visible, page, s.latent, r0 == 0 ? 0.0f : 1.0f,
           o_lat.data(), s.rank);
  });
  float* o = out.row<float>(seq.rows.begin + i);
  for (int64_t h = 0; h < s.heads; ++h) {
    const float* w_uv = kv_b.data() + (h * s.kv + s.nope) * s.rank;  // [v, rank]
    cblas_sgemv(CblasRowMajor, CblasNoTrans, s.v, s.rank, 1.0f, w_uv, s.rank,
                o_lat.data() + h * s.rank, 1, 0.0f, o + h * s.v, 1);
  }
}

}  // namespace

void MlaAttention(ThreadPool& pool, const MlaParams& params, TensorView q, TensorView latent,
                  TensorView kv_b, std::span<const MlaSequence> seqs, TensorView out,
                  const F32Scratch& scratch) {
  const Shapes s(params);
  DS_CHECK(q.cols == s.heads * s.qk && latent.cols == s.latent && out.cols == s.heads * s.v);
  DS_CHECK(kv_b.rows == s.heads * s.kv && kv_b.cols == s.rank);

  for (const MlaSequence& seq : seqs) {
    DS_CHECK(seq.cache.pages != nullptr && seq.cache.page_rows > 0 && seq.cache.dtype == DType::kF32);
    for (int64_t i = 0; i < seq.rows.length; ++i) {
      std::memcpy(seq.cache.Row(seq.num_cached + i, s.latent), latent.row<float>(seq.rows.begin + i),
                  sizeof(float) * s.latent);
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
  // Expanded sequences: the history contiguous, and its per-head keys and values,
  // [L, H*(nope+v)].
  std::vector<Tensor> history(seqs.size()), kv_all(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const MlaSequence& seq = seqs[i];
    if (seq.form != MlaForm::kExpanded) continue;
    const int64_t length = seq.num_cached + seq.rows.length;
    history[i] = scratch(length, s.latent);
    kv_all[i] = scratch(length, s.heads * s.kv);
    if (history[i].empty() || kv_all[i].empty()) return;
    Contiguous(seq.cache, length, s.latent, history[i].data<float>());
    TensorView cache_latent{history[i].data<float>(), DType::kF32, length, s.rank, s.latent};
    MatMul(pool, cache_latent, kv_b, kv_all[i].view());
  }

  // Tasks: (sequence, head) for the expanded form, (sequence, query) for the absorbed one.
  struct Task {
    size_t seq;
    int64_t index;
  };
  std::vector<Task> tasks;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t count = seqs[i].form == MlaForm::kExpanded ? s.heads : seqs[i].rows.length;
    for (int64_t j = 0; j < count; ++j) tasks.push_back({i, j});
  }
  pool.ParallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    const MlaSequence& seq = seqs[tasks[t].seq];
    if (seq.form == MlaForm::kExpanded) {
      ExpandedHead(s, params.scale, seq, q, history[tasks[t].seq].data<float>(), kv_all[tasks[t].seq].data<float>(),
                   tasks[t].index, out);
    } else {
      AbsorbedQuery(s, params.scale, seq, q, kv_b_f32, tasks[t].index, out);
    }
  });
}

}  // namespace deltaserve::kernels::cpu
