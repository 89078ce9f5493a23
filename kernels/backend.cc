#include "kernels/backend.h"

#include <array>
#include <vector>

namespace deltaserve::kernels {

void Backend::KdaDecodeStep(const KdaDecodeInputs& in, std::span<const KdaDecodeSequence> seqs,
                            TensorView out) {
  const int64_t t = in.core.q.rows, width = in.core.q.cols;
  const std::array<TensorView, 3> projections = {in.core.q, in.core.k, in.core.v};
  std::array<Tensor, 3> convolved;
  std::vector<ConvSequence> conv(seqs.size());
  for (size_t i = 0; i < 3; ++i) {
    for (size_t s = 0; s < seqs.size(); ++s) conv[s] = {{seqs[s].row, 1}, seqs[s].conv_tails[i]};
    convolved[i] = Allocate(t, width, DType::kF32);
    CausalConvSilu(projections[i], in.conv_weights[i], conv, convolved[i].view());
  }
  KdaInputs core = in.core;
  core.q = convolved[0].view();
  core.k = convolved[1].view();
  core.v = convolved[2].view();
  std::vector<KdaSequence> kda(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    kda[s] = {{seqs[s].row, 1}, KdaAlgorithm::kRecurrent, seqs[s].state};
  }
  Tensor attended = Allocate(t, width, DType::kF32);
  KdaAttention(core, kda, attended.view());
  GatedRmsNorm(attended.view(), in.out_gate, in.out_norm, in.core.head_dim, in.eps, out);
}

}  // namespace deltaserve::kernels
