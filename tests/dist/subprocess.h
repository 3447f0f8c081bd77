// Subprocess: a program run by the dist tests (fork/execv, no shell) with
// stdout and stderr merged into one pipe that the test reads as it goes, so
// a test can wait for a line, send a signal, then wait for the end.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace mingpt::dist_test {

class Subprocess {
 public:
  using Clock = std::chrono::steady_clock;

  // Starts argv[0] (a path) with stdin from /dev/null.
  explicit Subprocess(const std::vector<std::string>& argv) : start_(Clock::now()) {
    std::vector<std::string> strings = argv;
    std::vector<char*> args;
    for (std::string& s : strings) args.push_back(s.data());
    args.push_back(nullptr);
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      const int devnull = ::open("/dev/null", O_RDONLY);
      ::dup2(devnull, 0);
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    fd_ = fds[0];
  }

  ~Subprocess() {
    if (pid_ > 0 && !finished_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string& output() const { return output_; }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

  // Reads output until it holds `text` (true) or the output ends or
  // `timeout_s` passes (false).
  bool WaitForOutput(const std::string& text, double timeout_s) {
    const Clock::time_point deadline = Deadline(timeout_s);
    while (output_.find(text) == std::string::npos) {
      if (!ReadSome(deadline)) return false;
    }
    return true;
  }

  void Signal(int signal) { ::kill(pid_, signal); }

  // Reads all output and reaps the process. Returns its exit code, 128 +
  // the signal that ended it, or -1 if it ran past `timeout_s` (then it is
  // killed).
  int Finish(double timeout_s) {
    const Clock::time_point deadline = Deadline(timeout_s);
    while (ReadSome(deadline)) {
    }
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        finished_ = true;
        return -1;
      }
      ::usleep(10000);
    }
    finished_ = true;
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
  }

 private:
  static Clock::time_point Deadline(double timeout_s) {
    return Clock::now() +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  }

  // Appends what arrives before `deadline`; false at end of output or deadline.
  bool ReadSome(Clock::time_point deadline) {
    if (fd_ < 0) return false;
    while (true) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 200)));
      if (ready <= 0) continue;
      char buf[4096];
      const ssize_t got = ::read(fd_, buf, sizeof(buf));
      if (got > 0) {
        output_.append(buf, static_cast<size_t>(got));
        return true;
      }
      if (got < 0 && errno == EINTR) continue;
      ::close(fd_);
      fd_ = -1;
      return false;
    }
  }

  Clock::time_point start_;
  pid_t pid_ = -1;
  int fd_ = -1;
  bool finished_ = false;
  std::string output_;
};

}  // namespace mingpt::dist_test
