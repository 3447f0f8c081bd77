// Progress reporting for long work: on a terminal, one line redrawn in place
// (step/total, a bar, loss, lr, tokens/s, ETA); otherwise plain lines every
// `every` steps, suitable for logs.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace mingpt {

class Progress {
 public:
  // interactive: -1 decides by isatty(stderr). silent: print nothing (the
  // ranks other than 0).
  Progress(int64_t first_step, int64_t total_steps, int every, int interactive = -1,
           bool silent = false);

  // Reports that `step` (1-based count of steps done) finished.
  void Update(int64_t step, double loss, double lr, double tokens_per_s);
  // Prints a message on its own line (keeping the bar intact).
  void Message(const std::string& line);
  void Finish();

 private:
  std::string Eta(int64_t step) const;
  int64_t first_step_, total_;
  int every_;
  bool tty_;
  bool silent_;
  bool bar_drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace mingpt
