#include "train/bench.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

namespace mingpt {

std::string BenchRow::DisplayName() const {
  static const std::map<std::string, std::string> kNames = {
      {"single_device", "Single device"},
      {"ddp", "DDP"},
      {"deepspeed_stage_1", "DeepSpeed ZeRO Stage 1"},
      {"deepspeed_stage_2", "DeepSpeed ZeRO Stage 2"},
      {"deepspeed_stage_3", "DeepSpeed ZeRO Stage 3"},
      {"deepspeed_stage_2_offload", "DeepSpeed ZeRO Stage 2 Offload"},
      {"deepspeed_stage_3_offload", "DeepSpeed ZeRO Stage 3 Offload"},
      {"deepspeed_stage_3_offload_nvme", "DeepSpeed ZeRO Stage 3 Offload NVMe"},
  };
  auto it = kNames.find(strategy);
  std::string name = it != kNames.end() ? it->second : strategy;
  return activation_checkpointing ? name + " w checkpointing" : name;
}

double TrainingFlopsPerToken(const ModelConfig& c, int64_t parameters) {
  return 6.0 * static_cast<double>(parameters) +
         12.0 * c.n_layer * static_cast<double>(c.n_embd) * c.block_size;
}

StatusOr<int> LargestFitting(int known_fit, int limit,
                             const std::function<StatusOr<bool>(int)>& fits, int* probes) {
  int lo = std::max(1, std::min(known_fit, limit));  // fits
  int hi = 0;                                         // fails (0: none found yet)
  auto probe = [&](int b) -> StatusOr<bool> {
    ++*probes;
    return fits(b);
  };
  while (hi == 0 && lo < limit) {
    const int next = static_cast<int>(std::min<int64_t>(int64_t{lo} * 2, limit));
    MINGPT_ASSIGN_OR_RETURN(const bool ok, probe(next));
    if (ok) {
      lo = next;
    } else {
      hi = next;
    }
  }
  if (hi == 0) return lo;  // reached the limit
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    MINGPT_ASSIGN_OR_RETURN(const bool ok, probe(mid));
    (ok ? lo : hi) = mid;
  }
  return lo;
}

namespace {

std::string Fmt(const char* format, double v) {
  char b[64];
  std::snprintf(b, sizeof(b), format, v);
  return b;
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string Html(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// The axis maximum: the smallest 1, 2 or 5 times a power of ten >= v.
double NiceCeiling(double v) {
  if (!(v > 0)) return 1;
  const double p = std::pow(10.0, std::floor(std::log10(v)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * p >= v * (1 - 1e-12)) return m * p;
  }
  return 10 * p;
}

std::string Short(double v) {
  const double a = std::fabs(v);
  if (a >= 1e9) return Fmt("%.3gG", v / 1e9);
  if (a >= 1e6) return Fmt("%.3gM", v / 1e6);
  if (a >= 1e4) return Fmt("%.3gk", v / 1e3);
  return Fmt("%.3g", v);
}

constexpr const char* kColors[] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759",
                                   "#76b7b2", "#edc948", "#b07aa1", "#9c755f"};

// A grouped bar chart: groups (models) on x, one bar per series.
std::string BarChart(const std::string& title, const std::vector<std::string>& groups,
                     const std::vector<std::string>& series,
                     const std::map<std::pair<std::string, std::string>, double>& values) {
  const double W = 760, H = 300, left = 70, right = 20, top = 40, bottom = 50;
  double vmax = 0;
  for (const auto& [k, v] : values) vmax = std::max(vmax, v);
  const double ymax = NiceCeiling(vmax);
  std::ostringstream s;
  s << "<svg viewBox=\"0 0 " << W << " " << H + 22.0 * ((series.size() + 2) / 3)
    << "\" width=\"" << W << "\" role=\"img\" aria-label=\"" << Html(title) << "\">\n";
  s << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" class=\"title\">" << Html(title)
    << "</text>\n";
  const double plot_h = H - top - bottom, plot_w = W - left - right;
  for (int i = 0; i <= 5; ++i) {
    const double y = top + plot_h * (1 - i / 5.0);
    s << "<line x1=\"" << left << "\" x2=\"" << W - right << "\" y1=\"" << y << "\" y2=\"" << y
      << "\" class=\"grid\"/>";
    s << "<text x=\"" << left - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">"
      << Short(ymax * i / 5.0) << "</text>\n";
  }
  const double group_w = plot_w / std::max<size_t>(1, groups.size());
  const double bar_w = group_w * 0.8 / std::max<size_t>(1, series.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    const double gx = left + g * group_w;
    s << "<text x=\"" << gx + group_w / 2 << "\" y=\"" << top + plot_h + 20
      << "\" text-anchor=\"middle\">" << Html(groups[g]) << "</text>\n";
    for (size_t i = 0; i < series.size(); ++i) {
      auto it = values.find({groups[g], series[i]});
      const double x = gx + group_w * 0.1 + i * bar_w;
      if (it == values.end()) {
        s << "<text x=\"" << x + bar_w / 2 << "\" y=\"" << top + plot_h - 4
          << "\" text-anchor=\"middle\" class=\"na\">&#215;</text>";
        continue;
      }
      const double h = plot_h * it->second / ymax;
      s << "<rect x=\"" << x << "\" y=\"" << top + plot_h - h << "\" width=\"" << bar_w * 0.92
        << "\" height=\"" << h << "\" fill=\"" << kColors[i % 8] << "\"><title>"
        << Html(series[i]) << ", " << Html(groups[g]) << ": " << Fmt("%.4g", it->second)
        << "</title></rect>";
    }
    s << "\n";
  }
  for (size_t i = 0; i < series.size(); ++i) {
    const double lx = left + (i % 3) * 230.0, ly = H + 22.0 * (i / 3) - 4;
    s << "<rect x=\"" << lx << "\" y=\"" << ly - 10 << "\" width=\"12\" height=\"12\" fill=\""
      << kColors[i % 8] << "\"/><text x=\"" << lx + 18 << "\" y=\"" << ly << "\">"
      << Html(series[i]) << "</text>\n";
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace

std::string BenchCsv(const std::vector<BenchRow>& rows) {
  std::ostringstream s;
  s << "Plugin,Plugin Alias,Model,n_layer,n_head,n_embd,block_size,Parameters,Devices,"
       "Activation Checkpointing,Precision,Batch Size,Time per iteration (s),Tokens per second,"
       "Peak Memory per Rank (MiB),Max Per Device Batch Size,Batch Search Probes,MFU,Status\n";
  for (const BenchRow& r : rows) {
    s << CsvField(r.DisplayName()) << "," << r.strategy << "," << CsvField(r.model) << ","
      << r.config.n_layer << "," << r.config.n_head << "," << r.config.n_embd << ","
      << r.config.block_size << "," << r.parameters << "," << r.devices << ","
      << (r.activation_checkpointing ? "true" : "false") << "," << r.precision << ","
      << r.batch_size << ",";
    if (r.ok) {
      s << Fmt("%.4f", r.time_per_iter_s) << "," << Fmt("%.1f", r.tokens_per_s) << ","
        << Fmt("%.1f", r.peak_rss_bytes / 1048576.0) << ",";
    } else {
      s << ",,,";
    }
    if (r.largest_batch > 0) {
      s << r.largest_batch << (r.largest_batch_capped ? "+" : "");
    }
    s << "," << r.probes << "," << (r.ok ? Fmt("%.4f", r.mfu) : "") << ","
      << CsvField(r.ok ? "ok" : r.error) << "\n";
  }
  return s.str();
}

std::string BenchHtml(const std::vector<BenchRow>& rows, const BenchContext& ctx) {
  std::vector<std::string> groups, series;
  auto add_unique = [](std::vector<std::string>* v, const std::string& x) {
    if (std::find(v->begin(), v->end(), x) == v->end()) v->push_back(x);
  };
  for (const BenchRow& r : rows) {
    add_unique(&groups, r.model);
    add_unique(&series, r.DisplayName());
  }
  using Values = std::map<std::pair<std::string, std::string>, double>;
  auto collect = [&](const std::function<double(const BenchRow&)>& f, bool need_ok) {
    Values v;
    for (const BenchRow& r : rows) {
      if (need_ok && !r.ok) continue;
      const double x = f(r);
      if (x > 0 || r.ok) v[{r.model, r.DisplayName()}] = x;
    }
    return v;
  };
  std::ostringstream s;
  s << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
       "<title>mingpt bench</title>\n<style>\n"
       "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}\n"
       "table{border-collapse:collapse;font-size:.85em;margin:1em 0}\n"
       "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}\n"
       "td:first-child,th:first-child,td.l{text-align:left}\n"
       "th{background:#f3f3f3}\nsvg{display:block;margin:1.5em 0;font-size:11px}\n"
       "svg .title{font-size:14px;font-weight:600}\nsvg .grid{stroke:#e4e4e4}\n"
       "svg .na{fill:#b00;font-size:13px}\n.err{color:#b00}\ncode{background:#f6f6f6}\n"
       "</style></head><body>\n<h1>mingpt bench</h1>\n";
  s << "<p>Measured " << Html(ctx.date) << " on " << Html(ctx.machine) << ".<br>Command: <code>"
    << Html(ctx.command) << "</code><br>GEMM ceiling (oneDNN, " << Html(ctx.gemm_shape)
    << "): <b>" << Fmt("%.1f", ctx.gemm_ceiling_gflops) << " GFLOP/s</b>; MFU counts "
    << "6&#936; + 12&#183;n_layer&#183;n_embd&#183;T FLOPs per token against it.";
  if (ctx.memory_budget > 0) {
    s << "<br>Largest batch: per rank, peak RSS within " << Fmt("%.0f", ctx.memory_budget / 1048576.0)
      << " MiB per rank, each probe a separate run of one step.";
  }
  s << "</p>\n";
  s << BarChart("Time per iteration (s)", groups, series,
                collect([](const BenchRow& r) { return r.time_per_iter_s; }, true));
  s << BarChart("Tokens per second (all ranks)", groups, series,
                collect([](const BenchRow& r) { return r.tokens_per_s; }, true));
  s << BarChart("Peak memory per rank (MiB)", groups, series,
                collect([](const BenchRow& r) { return r.peak_rss_bytes / 1048576.0; }, true));
  bool searched = false;
  for (const BenchRow& r : rows) searched |= r.largest_batch > 0;
  if (searched) {
    s << BarChart("Largest batch per rank within the memory budget", groups, series,
                  collect([](const BenchRow& r) { return static_cast<double>(r.largest_batch); },
                          false));
  }
  s << BarChart("MFU (% of the measured GEMM ceiling)", groups, series,
                collect([](const BenchRow& r) { return 100 * r.mfu; }, true));
  s << "<table><tr><th>strategy</th><th>model</th><th>parameters</th><th>ranks</th>"
       "<th>precision</th><th>batch/rank</th><th>s/iter</th><th>tokens/s</th>"
       "<th>peak MiB/rank</th><th>largest batch</th><th>MFU</th></tr>\n";
  for (const BenchRow& r : rows) {
    s << "<tr><td>" << Html(r.DisplayName()) << "</td><td class=\"l\">" << Html(r.model)
      << "</td><td>" << Short(static_cast<double>(r.parameters)) << "</td><td>" << r.devices
      << "</td><td>" << Html(r.precision) << "</td><td>" << r.batch_size << "</td>";
    if (r.ok) {
      s << "<td>" << Fmt("%.3f", r.time_per_iter_s) << "</td><td>" << Fmt("%.0f", r.tokens_per_s)
        << "</td><td>" << Fmt("%.0f", r.peak_rss_bytes / 1048576.0) << "</td>";
    } else {
      s << "<td colspan=\"3\" class=\"err\">" << Html(r.error) << "</td>";
    }
    s << "<td>"
      << (r.largest_batch > 0 ? std::to_string(r.largest_batch) + (r.largest_batch_capped ? "+" : "")
                              : std::string("&#8211;"))
      << "</td><td>" << (r.ok ? Fmt("%.1f%%", 100 * r.mfu) : std::string()) << "</td></tr>\n";
  }
  s << "</table>\n</body></html>\n";
  return s.str();
}

}  // namespace mingpt
