// `deltaserve client ...`: calls a running server through client/InferenceClient (generate,
// health, sessions list|get|delete|fork, model-info) or client/admin_client (drain) and prints
// one JSON object or a status word.
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "cli/commands.h"
#include "cli/token_list.h"
#include "client/admin_client.h"
#include "client/channel.h"
#include "client/inference_client.h"
#include "client/json_format.h"

namespace deltaserve::cli {
namespace {

// Flags of every `client` leaf: where to connect and as whom.
struct ConnectionArgs {
  std::string server;
  std::string tenant;
  std::optional<int64_t> timeout_ms;  // unset: the command's default
};

struct ClientGenerateArgs {
  std::string tokens;
  std::string session;
  bool new_session = false;
  std::optional<int32_t> max_new_tokens;
  std::optional<float> temperature;
  std::optional<int32_t> top_k;
  std::optional<float> top_p;
  std::optional<float> min_p;
  std::optional<uint64_t> seed;
  std::optional<float> repetition_penalty;
  std::optional<float> frequency_penalty;
  std::optional<float> presence_penalty;
  std::string stop_token_ids;
  bool ignore_eos = false;
  int32_t priority = 0;
};

struct ClientSessionArgs {
  std::string session;
  bool include_tokens = false;
  std::string new_session_id;
  int32_t page_size = 0;
  std::string page_token;
};

// Health checks answer at once when the server is up; don't hang on one that is not.
constexpr int64_t kHealthDefaultTimeoutMs = 5000;

void AddConnectionFlags(CLI::App& cmd, ConnectionArgs& args) {
  cmd.add_option("--server", args.server, "Server address, e.g. 127.0.0.1:50051")->required();
  cmd.add_option("--tenant", args.tenant, "Tenant to run as (x-deltaserve-tenant)");
  cmd.add_option("--timeout-ms", args.timeout_ms, "Deadline of the call in ms (0: none)")
      ->check(CLI::NonNegativeNumber);
}

client::InferenceClient MakeClient(const ConnectionArgs& args, int64_t default_timeout_ms) {
  client::ClientOptions options;
  options.tenant = args.tenant;
  options.timeout_ms = args.timeout_ms.value_or(default_timeout_ms);
  return client::InferenceClient(client::MakeChannel(args.server), std::move(options));
}

int ReportRpcError(const absl::Status& status) {
  std::fprintf(stderr, "deltaserve client: %s: %s\n",
               absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return 1;
}

int ReportUsage(const char* command, const absl::Status& status) {
  std::fprintf(stderr, "deltaserve client %s: %s\n", command,
               std::string(status.message()).c_str());
  return kUsageError;
}

int PrintJson(const std::string& json) {
  std::fputs((json + "\n").c_str(), stdout);
  return 0;
}

absl::StatusOr<v1::GenerateRequest> ToGenerateRequest(const ClientGenerateArgs& args) {
  v1::GenerateRequest request;
  absl::StatusOr<std::vector<int32_t>> tokens = ParseTokenList(args.tokens, "--tokens");
  if (!tokens.ok()) return tokens.status();
  if (tokens->empty()) return absl::InvalidArgumentError("--tokens needs at least one id");
  request.mutable_token_ids()->Add(tokens->begin(), tokens->end());
  if (args.new_session) {
    request.set_session_mode(v1::SESSION_MODE_CREATE);
    request.set_session_id(args.session);
  } else if (!args.session.empty()) {
    request.set_session_mode(v1::SESSION_MODE_CONTINUE);
    request.set_session_id(args.session);
  }
  v1::SamplingParams& sampling = *request.mutable_sampling();
  if (args.temperature) sampling.set_temperature(*args.temperature);
  if (args.top_k) sampling.set_top_k(*args.top_k);
  if (args.top_p) sampling.set_top_p(*args.top_p);
  if (args.min_p) sampling.set_min_p(*args.min_p);
  if (args.seed) sampling.set_seed(*args.seed);
  if (args.repetition_penalty) sampling.set_repetition_penalty(*args.repetition_penalty);
  if (args.frequency_penalty) sampling.set_frequency_penalty(*args.frequency_penalty);
  if (args.presence_penalty) sampling.set_presence_penalty(*args.presence_penalty);
  v1::StoppingParams& stopping = *request.mutable_stopping();
  if (args.max_new_tokens) stopping.set_max_new_tokens(*args.max_new_tokens);
  absl::StatusOr<std::vector<int32_t>> stops =
      ParseTokenList(args.stop_token_ids, "--stop-token-ids");
  if (!stops.ok()) return stops.status();
  stopping.mutable_stop_token_ids()->Add(stops->begin(), stops->end());
  stopping.set_ignore_eos(args.ignore_eos);
  request.set_priority(args.priority);
  return request;
}

class ClientCommand final : public Subcommand {
 public:
  CLI::App* Register(CLI::App& app) override {
    CLI::App* cmd = app.add_subcommand("client", "Call a running deltaserve server");
    cmd->require_subcommand(1);
    RegisterGenerate(*cmd);
    health_ =
        cmd->add_subcommand("health", "grpc.health.v1 check; prints SERVING (exit 0) or why not");
    AddConnectionFlags(*health_, connection_);
    health_->add_option("--service", service_, "Service to ask about (default: the whole server)");

    CLI::App* sessions = cmd->add_subcommand("sessions", "Manage sessions; prints JSON");
    sessions->require_subcommand(1);
    list_ = sessions->add_subcommand("list", "One page of this tenant's sessions");
    list_->add_option("--page-size", session_.page_size, "Sessions per page (server default 100)");
    list_->add_option("--page-token", session_.page_token, "next_page_token of the previous page");
    get_ = sessions->add_subcommand("get", "One session");
    get_->add_option("--session", session_.session, "Session id")->required();
    get_->add_flag("--include-tokens", session_.include_tokens, "Include the token history");
    delete_ = sessions->add_subcommand("delete", "Delete a session");
    delete_->add_option("--session", session_.session, "Session id")->required();
    fork_ = sessions->add_subcommand("fork", "Copy a session into a new one");
    fork_->add_option("--session", session_.session, "Session to copy")->required();
    fork_->add_option("--new-session-id", session_.new_session_id,
                      "New id (default: server assigns)");
    for (CLI::App* leaf : {list_, get_, delete_, fork_}) AddConnectionFlags(*leaf, connection_);

    model_info_ =
        cmd->add_subcommand("model-info", "The served model's shape and limits; prints JSON");
    AddConnectionFlags(*model_info_, connection_);

    drain_ = cmd->add_subcommand(
        "drain",
        "Stop admitting (after --admit-grace-ms); let requests in flight finish for --drain-ms, "
        "then end the rest, saving the sessions of turns that streamed; prints JSON when done "
        "(same host only)");
    drain_->add_option("--server", connection_.server, "Server address, e.g. 127.0.0.1:50051")
        ->required();
    drain_->add_option("--drain-ms", drain_ms_, "How long requests in flight may run on")
        ->check(CLI::Range(int64_t{0}, int64_t{3600} * 1000))
        ->capture_default_str();
    drain_->add_option("--admit-grace-ms", admit_grace_ms_,
                       "Keep admitting this long after turning NOT_SERVING (load balancers "
                       "polling health stop sending meanwhile)")
        ->check(CLI::Range(int64_t{0}, int64_t{3600} * 1000))
        ->capture_default_str();
    return cmd;
  }

  int Run() override {
    if (generate_->parsed()) return RunGenerate();
    if (health_->parsed()) return RunHealth();
    if (list_->parsed()) return RunList();
    if (get_->parsed()) return RunGet();
    if (delete_->parsed()) return RunDelete();
    if (fork_->parsed()) return RunFork();
    if (model_info_->parsed()) return RunModelInfo();
    if (drain_->parsed()) return RunDrain();
    return kUsageError;
  }

 private:
  void RegisterGenerate(CLI::App& parent) {
    ClientGenerateArgs& a = generate_args_;
    CLI::App* cmd = parent.add_subcommand("generate", "Stream a generation; prints JSON");
    generate_ = cmd;
    AddConnectionFlags(*cmd, connection_);
    cmd->add_option("--tokens", a.tokens, "This turn's token ids, e.g. 5,6,7")->required();
    cmd->add_option("--session", a.session,
                    "Session to continue (or to create, with --new-session)");
    cmd->add_flag("--new-session", a.new_session, "Create a session (named by --session if given)");
    cmd->add_option("--max-new-tokens", a.max_new_tokens,
                    "Tokens to generate at most (server default 16)");
    cmd->add_option("--temperature", a.temperature, "0 for greedy");
    cmd->add_option("--top-k", a.top_k, "Keep the k most likely tokens (0: off)");
    cmd->add_option("--top-p", a.top_p, "Nucleus mass");
    cmd->add_option("--min-p", a.min_p, "Drop tokens below min_p times the top probability");
    cmd->add_option("--seed", a.seed, "Random seed");
    cmd->add_option("--repetition-penalty", a.repetition_penalty);
    cmd->add_option("--frequency-penalty", a.frequency_penalty);
    cmd->add_option("--presence-penalty", a.presence_penalty);
    cmd->add_option("--stop-token-ids", a.stop_token_ids,
                    "Comma-separated ids that end generation");
    cmd->add_flag("--ignore-eos", a.ignore_eos, "Do not stop at the model's eos ids");
    cmd->add_option("--priority", a.priority, "Lower is served first (default 0)");
  }

  int RunGenerate() {
    absl::StatusOr<v1::GenerateRequest> request = ToGenerateRequest(generate_args_);
    if (!request.ok()) return ReportUsage("generate", request.status());
    client::InferenceClient client = MakeClient(connection_, 0);
    absl::StatusOr<client::GenerateResult> result = client.Generate(*request);
    if (!result.ok()) return ReportRpcError(result.status());
    return PrintJson(client::GenerateResultToJson(*result));
  }

  int RunHealth() {
    client::InferenceClient client = MakeClient(connection_, kHealthDefaultTimeoutMs);
    absl::StatusOr<client::ServingStatus> status = client.Health(service_);
    if (!status.ok()) return ReportRpcError(status.status());
    std::printf("%s\n", client::ServingStatusName(*status));
    return *status == client::ServingStatus::kServing ? 0 : 1;
  }

  int RunList() {
    v1::ListSessionsRequest request;
    request.set_page_size(session_.page_size);
    request.set_page_token(session_.page_token);
    absl::StatusOr<v1::ListSessionsResponse> response =
        MakeClient(connection_, 0).ListSessions(request);
    if (!response.ok()) return ReportRpcError(response.status());
    return PrintJson(client::ListSessionsResponseToJson(*response));
  }

  int RunGet() {
    v1::GetSessionRequest request;
    request.set_session_id(session_.session);
    request.set_include_tokens(session_.include_tokens);
    absl::StatusOr<v1::Session> session = MakeClient(connection_, 0).GetSession(request);
    if (!session.ok()) return ReportRpcError(session.status());
    return PrintJson(client::SessionToJson(*session));
  }

  int RunDelete() {
    v1::DeleteSessionRequest request;
    request.set_session_id(session_.session);
    const absl::Status status = MakeClient(connection_, 0).DeleteSession(request);
    if (!status.ok()) return ReportRpcError(status);
    return PrintJson("{\"session_id\": " + client::JsonQuote(session_.session) +
                     ", \"deleted\": true}");
  }

  int RunFork() {
    v1::ForkSessionRequest request;
    request.set_session_id(session_.session);
    request.set_new_session_id(session_.new_session_id);
    absl::StatusOr<v1::Session> session = MakeClient(connection_, 0).ForkSession(request);
    if (!session.ok()) return ReportRpcError(session.status());
    return PrintJson(client::SessionToJson(*session));
  }

  int RunModelInfo() {
    absl::StatusOr<v1::ModelInfo> info = MakeClient(connection_, 0).GetModelInfo();
    if (!info.ok()) return ReportRpcError(info.status());
    return PrintJson(client::ModelInfoToJson(*info));
  }

  int RunDrain() {
    absl::StatusOr<client::DrainResult> result =
        client::Drain(client::MakeChannel(connection_.server), drain_ms_, admit_grace_ms_);
    if (!result.ok()) return ReportRpcError(result.status());
    std::printf("{\"in_flight\": %lld, \"cut_short\": %lld, \"elapsed_ms\": %lld}\n",
                static_cast<long long>(result->in_flight), static_cast<long long>(result->cut_short),
                static_cast<long long>(result->elapsed_ms));
    return 0;
  }

  ConnectionArgs connection_;
  ClientGenerateArgs generate_args_;
  ClientSessionArgs session_;
  std::string service_;
  CLI::App* generate_ = nullptr;
  CLI::App* health_ = nullptr;
  CLI::App* list_ = nullptr;
  CLI::App* get_ = nullptr;
  CLI::App* delete_ = nullptr;
  CLI::App* fork_ = nullptr;
  CLI::App* model_info_ = nullptr;
  CLI::App* drain_ = nullptr;
  int64_t drain_ms_ = 30'000;
  int64_t admit_grace_ms_ = 0;
};

}  // namespace

std::unique_ptr<Subcommand> MakeClientCommand() { return std::make_unique<ClientCommand>(); }

}  // namespace deltaserve::cli
