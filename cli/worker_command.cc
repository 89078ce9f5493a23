// `deltaserve worker --role stage|experts`: a pipeline stage (a layer range) or an expert shard.
#include <cstdio>

#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/engine.h"
#include "cli/server_flags.h"
#include "services/process/cluster_processes.h"
#include "services/process/process_support.h"

namespace deltaserve::cli {
namespace {

class WorkerCommand final : public Subcommand {
 public:
  CLI::App* Register(CLI::App& app) override {
    CLI::App* cmd = app.add_subcommand("worker", "Run a stage worker or an expert worker");
    cmd->add_option("--role", role_, "stage or experts")->required()->check(CLI::IsMember({"stage", "experts"}));
    AddEngineFlags(*cmd, engine_);
    cmd->add_option("--layers", layers_, "Stage: the layers it holds, first-last (e.g. 0-13)");
    cmd->add_option("--next", stage_.next_stage, "Stage: address of the next stage (not on the last)");
    cmd->add_option("--expert-workers", expert_workers_,
                    "Stage: comma-separated expert worker addresses; empty: experts held here");
    cmd->add_option("--session-store", stage_.session_store, "Stage: session store address");
    cmd->add_option("--max-open-sequences", stage_.max_open_sequences)->capture_default_str();
    cmd->add_option("--nccl-max-rows", nccl_max_rows_,
                    "On a GPU: a stage hands the hidden rows of steps up to this many tokens to the next stage over "
                    "NCCL, and calls each expert worker over NCCL with up to this many token rows and slot outputs; "
                    "peers may link to this worker for as many (0: always gRPC)")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
    cmd->add_option("--nccl-timeout-ms", nccl_timeout_ms_, "On a GPU: joining an NCCL link, and each transfer")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--nccl-max-links", nccl_max_links_,
                    "On a GPU: NCCL links peers may hold to this worker at once (experts: one per stage process, "
                    "at the limit one unused for a minute makes room; stage: the previous stage's, at the limit "
                    "one not in use makes room)")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    cmd->add_option("--nccl-output-links", stage_.nccl_output_links,
                    "Stage on a GPU: NCCL links to the next stage, one per step that may be in flight below this "
                    "stage at once (the --pipeline-steps of every router that uses it); steps that find them all busy "
                    "go over gRPC")
        ->capture_default_str()
        ->check(CLI::Range(1, 64));
    cmd->add_option("--nccl-retry-ms", nccl_retry_ms_, "Stage on a GPU: how often a broken NCCL link is made again")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--experts", experts_, "Experts: the experts it holds, first-last (e.g. 0-127)");
    AddServerFlags(*cmd, flags_, "0.0.0.0:50061");
    return cmd;
  }

  int Run() override {
    if (role_ == "stage") {
      absl::StatusOr<services::IndexRange> range = services::ParseInclusiveRange(layers_, "--layers");
      if (!range.ok() || !experts_.empty()) {
        std::fprintf(stderr, "deltaserve worker: %s\n",
                     range.ok() ? "--experts is for --role experts" : std::string(range.status().message()).c_str());
        return kUsageError;
      }
      stage_.layer_begin = range->begin;
      stage_.layer_end = range->end;
      if (!expert_workers_.empty()) stage_.expert_workers = absl::StrSplit(expert_workers_, ',');
      return RunServerRole("stage_worker", flags_, [this] {
        stage_.process = flags_.process;
        stage_.model_dir = engine_.model_dir;
        stage_.backend = BackendChoiceFrom(engine_);
        stage_.layers = LayerOptionsFrom(engine_);
        stage_.nccl_max_rows = nccl_max_rows_;
        stage_.nccl_max_links = nccl_max_links_;
        stage_.nccl_timeout = std::chrono::milliseconds(nccl_timeout_ms_);
        stage_.nccl_retry = std::chrono::milliseconds(nccl_retry_ms_);
        return services::StartStageWorker(stage_);
      });
    }
    absl::StatusOr<services::IndexRange> range = services::ParseInclusiveRange(experts_, "--experts");
    if (!range.ok() || !layers_.empty()) {
      std::fprintf(stderr, "deltaserve worker: %s\n",
                   range.ok() ? "--layers is for --role stage" : std::string(range.status().message()).c_str());
      return kUsageError;
    }
    experts_config_.expert_begin = range->begin;
    experts_config_.expert_end = range->end;
    return RunServerRole("expert_worker", flags_, [this] {
      experts_config_.process = flags_.process;
      experts_config_.model_dir = engine_.model_dir;
      experts_config_.backend = BackendChoiceFrom(engine_);
      experts_config_.nccl_max_rows = nccl_max_rows_;
      experts_config_.nccl_max_links = nccl_max_links_;
      experts_config_.nccl_timeout = std::chrono::milliseconds(nccl_timeout_ms_);
      return services::StartExpertWorker(experts_config_);
    });
  }

 private:
  std::string role_;
  std::string layers_;
  std::string experts_;
  std::string expert_workers_;
  int64_t nccl_max_rows_ = 8192;
  int nccl_max_links_ = 16;
  int64_t nccl_timeout_ms_ = 30'000;
  int64_t nccl_retry_ms_ = 10'000;
  EngineArgs engine_;
  ServerFlags flags_;
  services::StageWorkerConfig stage_;
  services::ExpertWorkerConfig experts_config_;
};

}  // namespace

std::unique_ptr<Subcommand> MakeWorkerCommand() { return std::make_unique<WorkerCommand>(); }

}  // namespace deltaserve::cli
