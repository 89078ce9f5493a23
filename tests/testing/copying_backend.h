// A backend that computes on the CPU but copies every weight it adopts, as device backends do,
// so tests on any host can check code that must not rely on host weights staying valid after
// AdoptWeight (the weight loader releasing generated tensors).
#pragma once

#include <cstring>
#include <deque>
#include <span>
#include <string_view>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace deltaserve::testing {

class CopyingBackend final : public kernels::Backend {
 public:
  // latent_cache_dtype: the dtype its MLA latent pages take (BF16, as the CUDA backend's at
  // serving precision, for code that moves states; the CPU kernels themselves take F32 pages).
  explicit CopyingBackend(int num_threads = 1, kernels::DType latent_cache_dtype = kernels::DType::kF32)
      : cpu_({.num_threads = num_threads}), latent_cache_dtype_(latent_cache_dtype) {}

  kernels::DType LatentCacheDType() const override { return latent_cache_dtype_; }

  std::string_view name() const override { return "cpu-copying"; }
  kernels::BackendFailure TakeFailure() override { return cpu_.TakeFailure(); }

  kernels::TensorView AdoptWeight(kernels::TensorView host) override {
    kernels::Tensor& copy = weights_.emplace_back(cpu_.Allocate(host.rows, host.cols, host.dtype));
    for (int64_t r = 0; r < host.rows; ++r) {
      std::memcpy(copy.view().row<char>(r), host.row<char>(r),
                  static_cast<size_t>(host.cols) * kernels::DTypeSize(host.dtype));
    }
    return copy.view();
  }

  kernels::Tensor Allocate(int64_t rows, int64_t cols, kernels::DType dtype) override {
    return cpu_.Allocate(rows, cols, dtype);
  }
  void Free(void* data) override { cpu_.Free(data); }
  void Zero(kernels::TensorView dst) override { cpu_.Zero(dst); }
  void Upload(const void* host, kernels::TensorView dst) override { cpu_.Upload(host, dst); }
  void Download(kernels::TensorView src, void* host) override {
    ++downloads_;
    cpu_.Download(src, host);
  }
  // Download calls so far (reads a device backend would make through PCIe).
  int64_t downloads() const { return downloads_; }
  void Copy(kernels::TensorView src, kernels::TensorView dst) override { cpu_.Copy(src, dst); }
  void GatherRows(kernels::TensorView src, std::span<const int64_t> rows,
                  kernels::TensorView dst) override {
    cpu_.GatherRows(src, rows, dst);
  }
  void Embed(std::span<const int32_t> ids, kernels::TensorView table,
             kernels::TensorView out) override {
    cpu_.Embed(ids, table, out);
  }
  void MatMul(kernels::TensorView x, kernels::TensorView w, kernels::TensorView y) override {
    cpu_.MatMul(x, w, y);
  }
  void Add(kernels::TensorView acc, kernels::TensorView x) override { cpu_.Add(acc, x); }
  void RmsNorm(kernels::TensorView x, kernels::TensorView weight, float eps,
               kernels::TensorView out) override {
    cpu_.RmsNorm(x, weight, eps, out);
  }
  void SwiGlu(kernels::TensorView gate, kernels::TensorView up, kernels::TensorView out) override {
    cpu_.SwiGlu(gate, up, out);
  }
  void CausalConvSilu(kernels::TensorView x, kernels::TensorView weight,
                      std::span<const kernels::ConvSequence> seqs,
                      kernels::TensorView out) override {
    cpu_.CausalConvSilu(x, weight, seqs, out);
  }
  void KdaAttention(const kernels::KdaInputs& in, std::span<const kernels::KdaSequence> seqs,
                    kernels::TensorView out) override {
    cpu_.KdaAttention(in, seqs, out);
  }
  void GatedRmsNorm(kernels::TensorView x, kernels::TensorView gate, kernels::TensorView weight,
                    int64_t head_dim, float eps, kernels::TensorView out) override {
    cpu_.GatedRmsNorm(x, gate, weight, head_dim, eps, out);
  }
  void MlaAttention(const kernels::MlaParams& params, kernels::TensorView q,
                    kernels::TensorView latent, kernels::TensorView kv_b,
                    std::span<const kernels::MlaSequence> seqs, kernels::TensorView out) override {
    cpu_.MlaAttention(params, q, latent, kv_b, seqs, out);
  }
  void MoeRoute(kernels::TensorView router_logits, kernels::TensorView correction_bias,
                const kernels::MoeRouting& routing, kernels::TensorView expert_ids,
                kernels::TensorView weights) override {
    cpu_.MoeRoute(router_logits, correction_bias, routing, expert_ids, weights);
  }
  void MoeExperts(kernels::TensorView x, kernels::TensorView expert_ids,
                  std::span<const kernels::ExpertWeights> experts, int64_t first_expert,
                  kernels::TensorView slot_out) override {
    cpu_.MoeExperts(x, expert_ids, experts, first_expert, slot_out);
  }
  void MoeCombine(kernels::TensorView slot_out, kernels::TensorView weights,
                  kernels::TensorView out) override {
    cpu_.MoeCombine(slot_out, weights, out);
  }

 private:
  kernels::cpu::CpuBackend cpu_;
  kernels::DType latent_cache_dtype_;
  int64_t downloads_ = 0;
  std::deque<kernels::Tensor> weights_;  // the adopted copies
};

}  // namespace deltaserve::testing
