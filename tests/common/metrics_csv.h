// Reading a run's metrics.csv in tests: the train_loss column (or any other) by step.
#pragma once

#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace mingpt::test {

// The train_loss cells of <root>/metrics.csv as written, by step (the rows
// that have one: validation rows do not).
inline std::map<int, std::string> TrainLossCells(const std::string& root) {
  std::ifstream f(root + "/metrics.csv");
  std::string line;
  std::getline(f, line);
  std::map<int, std::string> out;
  while (std::getline(f, line)) {
    std::stringstream ss(line);
    std::string step, tokens, loss;
    std::getline(ss, step, ',');
    std::getline(ss, tokens, ',');
    std::getline(ss, loss, ',');
    if (!loss.empty()) out[std::stoi(step)] = loss;
  }
  return out;
}

// The same as numbers.
inline std::map<int, double> TrainLosses(const std::string& root) {
  std::map<int, double> out;
  for (const auto& [step, cell] : TrainLossCells(root)) out[step] = std::stod(cell);
  return out;
}

// Any column of <root>/metrics.csv by name, as numbers, by step (the rows
// where it is written).
inline std::map<int, double> MetricsColumn(const std::string& root, const std::string& name) {
  std::ifstream f(root + "/metrics.csv");
  std::string line, cell;
  std::getline(f, line);
  int index = -1;
  std::stringstream header(line);
  for (int i = 0; std::getline(header, cell, ','); ++i) {
    if (cell == name) index = i;
  }
  std::map<int, double> out;
  if (index < 0) return out;
  while (std::getline(f, line)) {
    std::stringstream ss(line);
    std::string step;
    std::getline(ss, step, ',');
    cell.clear();
    for (int i = 1; i <= index && std::getline(ss, cell, ','); ++i) {
    }
    if (index == 0) cell = step;
    if (!cell.empty()) out[std::stoi(step)] = std::stod(cell);
  }
  return out;
}

}  // namespace mingpt::test
