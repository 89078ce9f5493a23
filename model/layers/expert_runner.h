// Where the routed experts of an MoE layer run: in this process (LocalExpertRunner) or, in the
// split cluster, on expert workers behind the same interface.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "model/layers/layer_weights.h"

namespace deltaserve::model {

class ExpertRunner {
 public:
  virtual ~ExpertRunner() = default;
  // slot_out[t*k + s] = expert_{expert_ids[t, s]}(x[t]) for every token t and slot s.
  virtual absl::Status RunExperts(int64_t layer, kernels::TensorView x,
                                  kernels::TensorView expert_ids, kernels::TensorView slot_out) = 0;
  // Whether the experts run on this process's backend from the layer's loaded weights: the
  // caller may then hand the whole FFN to Backend::MoeFfn instead.
  virtual bool local() const { return false; }
};

// Runs every expert from locally loaded weights (which must hold all of them).
class LocalExpertRunner final : public ExpertRunner {
 public:
  LocalExpertRunner(kernels::Backend& backend, const ModelWeights& weights)
      : backend_(backend), weights_(weights) {}
  absl::Status RunExperts(int64_t layer, kernels::TensorView x, kernels::TensorView expert_ids,
                          kernels::TensorView slot_out) override;
  bool local() const override { return true; }

 private:
  kernels::Backend& backend_;
  const ModelWeights& weights_;
};

}  // namespace deltaserve::model
