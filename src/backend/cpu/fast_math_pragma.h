// Included FIRST by kernel files whose loops call sqrt or compare floats
// (clamps, selects): with GCC's defaults (-ftrapping-math, -fmath-errno)
// such loops are not vectorised at all, since a vector compare could raise
// an FP exception flag the scalar code would not, and sqrt must set errno.
// mingpt reads neither FP exception flags nor errno, so these two are
// switched off for the translation unit. Results are unchanged: IEEE
// arithmetic, rounding and NaN/inf propagation stay as they are (this is
// not -ffast-math: no reassociation, no finite-math assumption).
// Must precede every other include so that all inline functions of the
// translation unit share one set of options (GCC will not inline across
// mismatched ones).
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "no-math-errno")
#endif
