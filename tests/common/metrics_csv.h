// Reading a run's metrics.csv in tests: a column by name (train_loss, grad_norm...), by step;
// and memory.csv's peak RSS by rank.
#pragma once

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace mingpt::test {

// The cells of column `name` of <root>/metrics.csv as written, by step (the
// rows where it is written: validation rows have no train_loss, skipped
// steps no grad_norm). Empty when there is no such column.
inline std::map<int, std::string> MetricsCells(const std::string& root, const std::string& name) {
  auto split = [](const std::string& line) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    for (std::string cell; std::getline(ss, cell, ',');) cells.push_back(cell);
    return cells;
  };
  std::ifstream f(root + "/metrics.csv");
  std::string line;
  std::getline(f, line);
  const std::vector<std::string> header = split(line);
  size_t index = 0;
  while (index < header.size() && header[index] != name) ++index;
  std::map<int, std::string> out;
  if (index == header.size()) return out;
  while (std::getline(f, line)) {
    const std::vector<std::string> cells = split(line);
    if (index < cells.size() && !cells[index].empty()) out[std::stoi(cells[0])] = cells[index];
  }
  return out;
}

// The same as numbers.
inline std::map<int, double> MetricsColumn(const std::string& root, const std::string& name) {
  std::map<int, double> out;
  for (const auto& [step, cell] : MetricsCells(root, name)) out[step] = std::stod(cell);
  return out;
}

// The train_loss cells as written, and as numbers.
inline std::map<int, std::string> TrainLossCells(const std::string& root) {
  return MetricsCells(root, "train_loss");
}
inline std::map<int, double> TrainLosses(const std::string& root) {
  return MetricsColumn(root, "train_loss");
}

// Peak RSS of each rank in the last report of <root>/memory.csv (rows come in
// rank order; the last row of a rank is its final report, after the final save).
inline std::vector<double> PeakRss(const std::string& root) {
  std::ifstream f(root + "/memory.csv");
  std::string line;
  std::getline(f, line);
  std::vector<double> peak;
  while (std::getline(f, line)) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, ',');) cells.push_back(c);
    const size_t rank = std::stoul(cells[1]);
    if (peak.size() <= rank) peak.resize(rank + 1);
    peak[rank] = std::stod(cells[7]);
  }
  return peak;
}

}  // namespace mingpt::test
