// What every layer sees of one forward step: the backend, the configuration, the packed
// sequences with their states, and the per-engine choices of algorithm.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/backend.h"
#include "model/config/kimi_linear_config.h"
#include "model/state/sequence_state.h"

namespace deltaserve::model {

enum class KdaAlgorithmChoice : uint8_t {
  kAuto,       // recurrent for a single new token, chunked otherwise
  kChunked,
  kRecurrent,
};

enum class MlaFormChoice : uint8_t {
  kAuto,       // absorbed for a single new token, expanded otherwise
  kExpanded,
  kAbsorbed,
};

struct LayerOptions {
  KdaAlgorithmChoice kda_algorithm = KdaAlgorithmChoice::kAuto;
  MlaFormChoice mla_form = MlaFormChoice::kAuto;
  // Routing weights from sigmoid + bias, reproducing the HF remote code (spec §9.1). The
  // reference (transformers, vLLM, SGLang) uses the unbiased scores.
  bool biased_routing = false;
};

struct StepSequence {
  kernels::SequenceRows rows;  // this step's new tokens inside the packed batch
  SequenceState* state = nullptr;
};

struct Step {
  kernels::Backend& backend;
  const KimiLinearConfig& config;
  const LayerOptions& options;
  std::span<const StepSequence> seqs;
  int64_t num_tokens = 0;
};

}  // namespace deltaserve::model
