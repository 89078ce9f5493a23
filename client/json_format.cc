// JSON renderings of client results; written by hand to keep int64 values numeric (proto3's JSON
// mapping makes them strings) and the key order stable.
#include "client/json_format.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace deltaserve::client {
namespace {

template <typename Ints>
void AppendIntArray(std::string& out, const Ints& values) {
  out += '[';
  bool first = true;
  for (const auto value : values) {
    if (!first) out += ", ";
    first = false;
    absl::StrAppend(&out, value);
  }
  out += ']';
}

double NanosToMillis(int64_t nanos) { return static_cast<double>(nanos) / 1e6; }

}  // namespace

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    case v1::FINISH_REASON_ERROR:
      return "error";
    default:
      return "unspecified";
  }
}

const char* StorageTierName(v1::StorageTier tier) {
  switch (tier) {
    case v1::STORAGE_TIER_MEMORY:
      return "memory";
    case v1::STORAGE_TIER_DISK:
      return "disk";
    default:
      return "unspecified";
  }
}

std::string JsonQuote(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::string GenerateResultToJson(const GenerateResult& result) {
  std::string out = "{\"tokens\": ";
  AppendIntArray(out, result.token_ids);
  absl::StrAppend(&out, ", \"session_id\": ", JsonQuote(result.session_id),
                  ", \"finish_reason\": \"", FinishReasonName(result.finish_reason), "\"");
  const v1::Usage& usage = result.usage;
  absl::StrAppend(&out, ", \"usage\": {\"prompt_tokens\": ", usage.prompt_tokens(),
                  ", \"session_tokens\": ", usage.session_tokens(),
                  ", \"recomputed_tokens\": ", usage.recomputed_tokens(),
                  ", \"completion_tokens\": ", usage.completion_tokens(), "}");
  const v1::Timings& timings = result.timings;
  absl::StrAppend(
      &out,
      absl::StrFormat(", \"timings\": {\"queue_ms\": %.3f, \"first_token_ms\": %.3f"
                      ", \"total_ms\": %.3f}}",
                      NanosToMillis(timings.queue_ns()), NanosToMillis(timings.first_token_ns()),
                      NanosToMillis(timings.total_ns())));
  return out;
}

std::string SessionToJson(const v1::Session& session) {
  std::string out = absl::StrCat("{\"session_id\": ", JsonQuote(session.session_id()),
                                 ", \"num_tokens\": ", session.num_tokens(),
                                 ", \"state_bytes\": ", session.state_bytes(), ", \"tier\": \"",
                                 StorageTierName(session.tier()),
                                 "\", \"created_unix_ms\": ", session.created_unix_ms(),
                                 ", \"last_used_unix_ms\": ", session.last_used_unix_ms());
  if (!session.token_ids().empty()) {
    out += ", \"token_ids\": ";
    AppendIntArray(out, session.token_ids());
  }
  out += '}';
  return out;
}

std::string ListSessionsResponseToJson(const v1::ListSessionsResponse& response) {
  std::string out = "{\"sessions\": [";
  for (int i = 0; i < response.sessions_size(); ++i) {
    if (i > 0) out += ", ";
    out += SessionToJson(response.sessions(i));
  }
  absl::StrAppend(&out, "], \"next_page_token\": ", JsonQuote(response.next_page_token()), "}");
  return out;
}

std::string ModelInfoToJson(const v1::ModelInfo& info) {
  std::string out = absl::StrCat(
      "{\"model_type\": ", JsonQuote(info.model_type()), ", \"vocab_size\": ", info.vocab_size(),
      ", \"num_layers\": ", info.num_layers(), ", \"num_kda_layers\": ", info.num_kda_layers(),
      ", \"num_mla_layers\": ", info.num_mla_layers(), ", \"num_experts\": ", info.num_experts(),
      ", \"num_experts_per_token\": ", info.num_experts_per_token(), ", \"eos_token_ids\": ");
  AppendIntArray(out, info.eos_token_ids());
  absl::StrAppend(&out, ", \"max_context_tokens\": ", info.max_context_tokens(),
                  ", \"fingerprint\": ", JsonQuote(info.fingerprint()),
                  ", \"max_prompt_tokens\": ", info.max_prompt_tokens(),
                  ", \"max_new_tokens_limit\": ", info.max_new_tokens_limit(), "}");
  return out;
}

}  // namespace deltaserve::client
