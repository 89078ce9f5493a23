#include "kernels/cpu/kda_chunk.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

namespace deltaserve::kernels::cpu {
namespace {

// c = a · bᵀ (row-major, a [m, k], b [n, k], c [m, n] with leading dimension ldc).
void GemmNT(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
            int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

// c = alpha · a · b + beta · c (a [m, k], b [k, n]).
void GemmNN(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
              ldc);
}

// Per-chunk working set, rows of width d unless noted.
struct ChunkBuffers {
  explicit ChunkBuffers(int64_t d)
      : q(kKdaChunk * d), k(kKdaChunk * d), v(kKdaChunk * d), g(d), cum(kKdaChunk * d),
        beta(kKdaChunk), akk(kKdaChunk * kKdaChunk), aqk(kKdaChunk * kKdaChunk),
        u(kKdaChunk * d), w(kKdaChunk * d), decayed_rows(kKdaChunk * d),
        decayed_q(kKdaSubBlock * d), decayed_cols(kKdaChunk * d), out(kKdaChunk * d) {}
  std::vector<float> q, k, v, g, cum, beta;
  std::vector<float> akk, aqk;  // [C, C]
  std::vector<float> u, w;
  std::vector<float> decayed_rows, decayed_q, decayed_cols;
  std::vector<float> out;
};

// Akk (strictly lower, times beta_r) and Aqk (lower with diagonal) of spec §2.4 step 2.
void IntraChunkMatrices(int64_t c, int64_t d, ChunkBuffers& b) {
  std::fill(b.akk.begin(), b.akk.end(), 0.0f);
  std::fill(b.aqk.begin(), b.aqk.end(), 0.0f);
  const float* cum = b.cum.data();
  for (int64_t r0 = 0; r0 < c; r0 += kKdaSubBlock) {
    const int64_t r1 = std::min(c, r0 + kKdaSubBlock);
    // Diagonal block, element by element: exp(G_r - G_s) with s <= r is at most 1.
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t s = r0; s <= r; ++s) {
        float kk = 0.0f, qk = 0.0f;
        for (int64_t j = 0; j < d; ++j) {
          const float decay = std::exp(cum[r * d + j] - cum[s * d + j]);
          kk += b.k[r * d + j] * b.k[s * d + j] * decay;
          qk += b.q[r * d + j] * b.k[s * d + j] * decay;
        }
        b.aqk[r * kKdaChunk + s] = qk;
        if (s < r) b.akk[r * kKdaChunk + s] = b.beta[r] * kk;
      }
    }
    if (r0 == 0) continue;
    // Columns before the block: split exp(G_r - G_s) at the block's first row n, as
    // exp(G_r - G_n) · exp(G_n - G_s), both factors at most 1.
    const float* ref = cum + r0 * d;
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < d; ++j) {
        const float decay = std::exp(cum[r * d + j] - ref[j]);
        b.decayed_rows[(r - r0) * d + j] = b.k[r * d + j] * decay;
        b.decayed_q[(r - r0) * d + j] = b.q[r * d + j] * decay;
      }
    }
    for (int64_t s = 0; s < r0; ++s) {
      for (int64_t j = 0; j < d; ++j) {
        b.decayed_cols[s * d + j] = b.k[s * d + j] * std::exp(ref[j] - cum[s * d + j]);
      }
    }
    GemmNT(r1 - r0, r0, d, b.decayed_rows.data(), d, b.decayed_cols.data(), d, 0.0f,
           b.akk.data() + r0 * kKdaChunk, kKdaChunk);
    GemmNT(r1 - r0, r0, d, b.decayed_q.data(), d, b.decayed_cols.data(), d, 0.0f,
           b.aqk.data() + r0 * kKdaChunk, kKdaChunk);
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t s = 0; s < r0; ++s) b.akk[r * kKdaChunk + s] *= b.beta[r];
    }
  }
}

// U = (I + Akk)^-1 (beta ⊙ V) and W = (I + Akk)^-1 (beta ⊙ exp(G) ⊙ K) by forward substitution.
void UtTransform(int64_t c, int64_t d, ChunkBuffers& b) {
  for (int64_t r = 0; r < c; ++r) {
    float* u = b.u.data() + r * d;
    float* w = b.w.data() + r * d;
    for (int64_t j = 0; j < d; ++j) {
      u[j] = b.beta[r] * b.v[r * d + j];
      w[j] = b.beta[r] * std::exp(b.cum[r * d + j]) * b.k[r * d + j];
    }
    for (int64_t s = 0; s < r; ++s) {
      const float a = b.akk[r * kKdaChunk + s];
      const float* u_s = b.u.data() + s * d;
      const float* w_s = b.w.data() + s * d;
      for (int64_t j = 0; j < d; ++j) {
        u[j] -= a * u_s[j];
        w[j] -= a * w_s[j];
      }
    }
  }
}

}  // namespace

void KdaChunkHead(const KdaPreparer& prep, SequenceRows rows, int64_t h, float* state,
                  TensorView out) {
  const int64_t d = prep.head_dim();
  thread_local std::unique_ptr<ChunkBuffers> buffers;
  if (buffers == nullptr || static_cast<int64_t>(buffers->g.size()) != d) {
    buffers = std::make_unique<ChunkBuffers>(d);
  }
  ChunkBuffers& b = *buffers;

  for (int64_t c0 = 0; c0 < rows.length; c0 += kKdaChunk) {
    const int64_t c = std::min(kKdaChunk, rows.length - c0);
    for (int64_t r = 0; r < c; ++r) {
      prep.Prepare(rows.begin + c0 + r, h, &b.q[r * d], &b.k[r * d], &b.v[r * d], b.g.data(),
                   &b.beta[r]);
      for (int64_t j = 0; j < d; ++j) {
        b.cum[r * d + j] = (r == 0 ? 0.0f : b.cum[(r - 1) * d + j]) + b.g[j];
      }
    }
    IntraChunkMatrices(c, d, b);
    UtTransform(c, d, b);

    // Vn = U - W·S, kept in b.u.
    GemmNN(c, d, d, -1.0f, b.w.data(), d, state, d, 1.0f, b.u.data(), d);
    // O = (Q ⊙ exp(G))·S + Aqk·Vn.
    for (int64_t r = 0; r < c; ++r) {
      for (int64_t j = 0; j < d; ++j) b.decayed_rows[r * d + j] = b.q[r * d + j] * std::exp(b.cum[r * d + j]);
    }
    GemmNN(c, d, d, 1.0f, b.decayed_rows.data(), d, state, d, 0.0f, b.out.data(), d);
    GemmNN(c, d, c, 1.0f, b.aqk.data(), kKdaChunk, b.u.data(), d, 1.0f, b.out.data(), d);
    for (int64_t r = 0; r < c; ++r) {
      std::copy_n(&b.out[r * d], d, out.row<float>(rows.begin + c0 + r) + h * d);
    }
    // S = Diag(exp(G_last))·S + (K ⊙ exp(G_last - G))ᵀ·Vn.
    const float* last = &b.cum[(c - 1) * d];
    for (int64_t i = 0; i < d; ++i) {
      const float decay = std::exp(last[i]);
      for (int64_t j = 0; j < d; ++j) state[i * d + j] *= decay;
    }
    for (int64_t r = 0; r < c; ++r) {
      for (int64_t j = 0; j < d; ++j) {
        b.decayed_cols[r * d + j] = b.k[r * d + j] * std::exp(last[j] - b.cum[r * d + j]);
      }
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, c, 1.0f, b.decayed_cols.data(), d,
                b.u.data(), d, 1.0f, state, d);
  }
}

}  // namespace deltaserve::kernels::cpu
