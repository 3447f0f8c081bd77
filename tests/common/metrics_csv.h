// Reading a run's metrics.csv in tests: the train_loss column by step.
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

}  // namespace mingpt::test
