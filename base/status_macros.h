// Propagation helpers for absl::Status / absl::StatusOr (Debian's abseil 20220623 has no public ones).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DS_STATUS_CONCAT_INNER_(a, b) a##b
#define DS_STATUS_CONCAT_(a, b) DS_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define DS_RETURN_IF_ERROR(expr)                        \
  do {                                                  \
    ::absl::Status ds_status_ = (expr);                 \
    if (!ds_status_.ok()) return ds_status_;            \
  } while (false)

// `DS_ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns x or returns the error.
#define DS_ASSIGN_OR_RETURN(lhs, rexpr) \
  DS_ASSIGN_OR_RETURN_IMPL_(DS_STATUS_CONCAT_(ds_statusor_, __LINE__), lhs, rexpr)

#define DS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = *std::move(statusor)
