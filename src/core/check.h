// MINGPT_CHECK: invariants that only a bug can break. On failure it prints
// file:line and the message and aborts the process at once.
#pragma once

#include <cstdio>
#include <cstdlib>

#define MINGPT_CHECK(cond, ...)                                              \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, \
                   #cond);                                                   \
      std::fprintf(stderr, __VA_ARGS__);                                     \
      std::fprintf(stderr, "\n");                                            \
      std::abort();                                                          \
    }                                                                        \
  } while (0)
