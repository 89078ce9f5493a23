// Compact JSON renderings of client results, as `deltaserve client` prints them (one object, keys
// in a fixed order, int64 values as numbers, durations in milliseconds).
#pragma once

#include <string>
#include <string_view>

#include "client/inference_client.h"
#include "deltaserve/v1/inference.pb.h"

namespace deltaserve::client {

// "stop", "length", "cancelled", "error"; "unspecified" for FINISH_REASON_UNSPECIFIED.
const char* FinishReasonName(v1::FinishReason reason);
// "memory", "disk"; "unspecified" for STORAGE_TIER_UNSPECIFIED.
const char* StorageTierName(v1::StorageTier tier);

// `text` as a JSON string literal, quotes included (control characters as \u00XX; other bytes,
// UTF-8 included, are copied).
std::string JsonQuote(std::string_view text);

// {"tokens": [..], "session_id": "..", "finish_reason": "..", "usage": {"prompt_tokens": n,
//  "session_tokens": n, "recomputed_tokens": n, "completion_tokens": n}, "timings": {"queue_ms": x,
//  "first_token_ms": y, "total_ms": z}} with milliseconds to 3 decimals.
std::string GenerateResultToJson(const GenerateResult& result);

// {"session_id": "..", "num_tokens": n, "state_bytes": n, "tier": "..", "created_unix_ms": n,
//  "last_used_unix_ms": n} plus "token_ids": [..] when the session carries its history.
std::string SessionToJson(const v1::Session& session);

// {"sessions": [<SessionToJson>...], "next_page_token": ".."}
std::string ListSessionsResponseToJson(const v1::ListSessionsResponse& response);

// Every ModelInfo field under its proto name.
std::string ModelInfoToJson(const v1::ModelInfo& info);

}  // namespace deltaserve::client
