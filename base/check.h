// Invariant checks: for programming errors only, never for input (input gets an absl::Status).
#pragma once

#include <cstdio>
#include <cstdlib>

#define DS_CHECK(cond)                                                              \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (false)
