// The page `mingpt serve` answers GET / with: HTML, CSS and plain JavaScript
// in one document, no external resources (works offline). Panels: Generate
// (streams POST /v1/generate), Runs (SVG line charts of /v1/runs/{id}/metrics,
// refreshed every few seconds) and Benchmarks (SVG bars of /v1/bench).
#pragma once

#include <string_view>

namespace mingpt::serve {

std::string_view IndexPage();

}  // namespace mingpt::serve
