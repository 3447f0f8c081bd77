#include "train/progress.h"

#include <unistd.h>

namespace mingpt {

Progress::Progress(int64_t first_step, int64_t total_steps, int every, int interactive,
                   bool silent)
    : first_step_(first_step), total_(total_steps), every_(every),
      tty_(interactive < 0 ? isatty(STDERR_FILENO) != 0 : interactive != 0), silent_(silent),
      start_(std::chrono::steady_clock::now()) {}

std::string Progress::Eta(int64_t step) const {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = step - first_step_;
  if (done <= 0) return "--:--";
  const int64_t secs = static_cast<int64_t>(elapsed / done * (total_ - step) + 0.5);
  char buf[32];
  if (secs >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(secs / 3600),
                  static_cast<long long>(secs / 60 % 60), static_cast<long long>(secs % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%02lld:%02lld", static_cast<long long>(secs / 60),
                  static_cast<long long>(secs % 60));
  }
  return buf;
}

void Progress::Update(int64_t step, double loss, double lr, double tokens_per_s) {
  if (silent_) return;
  if (tty_) {
    constexpr int kWidth = 24;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * step / total_) : 0;
    std::string bar(filled, '=');
    if (filled < kWidth) bar += '>' + std::string(kWidth - filled - 1, ' ');
    std::fprintf(stderr, "\r\033[Kstep %lld/%lld [%s] loss %.4f lr %.2e %.0f tok/s ETA %s",
                 static_cast<long long>(step), static_cast<long long>(total_), bar.c_str(), loss,
                 lr, tokens_per_s, Eta(step).c_str());
    std::fflush(stderr);
    bar_drawn_ = true;
  } else if (step % every_ == 0 || step == total_) {
    std::fprintf(stderr, "step %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %s\n",
                 static_cast<long long>(step), static_cast<long long>(total_), loss, lr,
                 tokens_per_s, Eta(step).c_str());
  }
}

void Progress::Message(const std::string& line) {
  if (silent_) return;
  if (tty_ && bar_drawn_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", line.c_str());
  bar_drawn_ = false;
}

void Progress::Finish() {
  if (tty_ && bar_drawn_) std::fprintf(stderr, "\n");
  bar_drawn_ = false;
}

}  // namespace mingpt
