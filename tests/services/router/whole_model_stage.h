// The fixture model on the CPU as one in-process stage, for the router's tests.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kimi_linear_model.h"
#include "services/router/engine_core.h"
#include "services/worker/stage_engine.h"
#include "tests/testing/gated_store_client.h"

namespace deltaserve::testing {

inline const std::string kTinyFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";

// The whole model as one stage (at most `max_open` sequences), over a store whose gate holds
// `hold` transfers until the test opens it, on a CPU backend with `memory_limit_bytes` (0: none).
struct WholeModelStage {
  explicit WholeModelStage(GatedStoreClient::Hold hold = GatedStoreClient::Hold::kUploads,
                           int64_t memory_limit_bytes = 0)
      : backend({.num_threads = 1, .memory_limit_bytes = memory_limit_bytes}), store(hold) {}
  absl::Status Load(int64_t max_open) {
    auto loaded = model::KimiLinearModel::Load(kTinyFixture, backend);
    if (!loaded.ok()) return loaded.status();
    model = *std::move(loaded);
    stage = std::make_unique<services::StageEngine>(*model, &store, nullptr,
                                                    services::StageEngineOptions{.max_open_sequences = max_open});
    return absl::OkStatus();
  }
  services::RouterModel router_model() const {
    return {model->config(), model->fingerprint(), model->max_context()};
  }

  kernels::cpu::CpuBackend backend;
  std::unique_ptr<model::KimiLinearModel> model;
  GatedStoreClient store;
  std::unique_ptr<services::StageEngine> stage;
};

}  // namespace deltaserve::testing
