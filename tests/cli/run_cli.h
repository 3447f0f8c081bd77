// Helpers for the command-line tests: run a program (the built `mingpt`,
// MINGPT_BIN) with fork/execve, no shell; capture stdout and stderr
// separately; kill it after a timeout; report how it ended. Plus a scratch
// directory per test and the assertion of the error contract:
//
//   bad input -> exactly one line on stderr, "mingpt: error: ...", and a
//   non-zero exit (1; 2 for command-line parse errors); never a signal.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

extern char** environ;

namespace mingpt::cli_test {

// How a child process ended and what it wrote.
struct ProcessResult {
  int exit_code = -1;      // valid when signal == 0 and !timed_out
  int signal = 0;          // the signal that ended it, 0 if it exited
  bool timed_out = false;  // killed by us after the timeout
  bool spawn_failed = false;
  std::string out, err;
  std::string command;     // for messages

  // One paragraph for assertion messages: command, ending, stdout, stderr.
  std::string Describe() const {
    std::ostringstream s;
    s << "command: " << command << "\n";
    if (spawn_failed) {
      s << "ended: could not be started\n";
    } else if (timed_out) {
      s << "ended: killed after the timeout\n";
    } else if (signal != 0) {
      s << "ended: signal " << signal << " (" << ::strsignal(signal) << ")\n";
    } else {
      s << "ended: exit " << exit_code << "\n";
    }
    s << "stdout (" << out.size() << " bytes): " << out.substr(0, 2000) << "\n";
    s << "stderr (" << err.size() << " bytes): " << err.substr(0, 4000) << "\n";
    return s.str();
  }
};

struct RunOptions {
  std::map<std::string, std::string> env;  // set (overriding the parent's)
  std::function<void(pid_t)> on_start;     // called with the child's pid once it runs
  std::string cwd;                         // empty: the parent's
  double timeout_s = 60;
};

// Runs `argv[0]` (a path, not searched in PATH) with `argv` via fork/execve.
// stdin is /dev/null. The child is its own process group leader; on timeout
// the group is killed with SIGKILL.
inline ProcessResult RunProcess(const std::vector<std::string>& argv, const RunOptions& opts = {}) {
  ProcessResult r;
  for (const std::string& a : argv) {
    if (!r.command.empty()) r.command += ' ';
    r.command += a.find_first_of(" '\"\\") == std::string::npos && !a.empty() ? a : "'" + a + "'";
  }

  // The environment: ours, with opts.env overriding.
  std::map<std::string, std::string> env_map;
  for (char** e = environ; e && *e; ++e) {
    std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    env_map[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : opts.env) env_map[k] = v;
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env_map) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, args;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (std::string& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);

  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    r.spawn_failed = true;
    return r;
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    r.spawn_failed = true;
    return r;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) ::close(fd);
    r.spawn_failed = true;
    return r;
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls from here on.
    ::setpgid(0, 0);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    if (!opts.cwd.empty() && ::chdir(opts.cwd.c_str()) != 0) ::_exit(126);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also from the parent, so the kill below never misses
  if (opts.on_start) opts.on_start(pid);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);

  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(opts.timeout_s);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  char buf[65536];
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      r.timed_out = true;
      break;
    }
    const int n = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t got = ::read(fds[i].fd, buf, sizeof(buf));
      if (got > 0) {
        sinks[i]->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  if (r.timed_out) ::kill(-pid, SIGKILL);

  // Both pipes are closed by the child; it may still be exiting. Wait for it,
  // still under the deadline.
  int status = 0;
  while (true) {
    const pid_t w = ::waitpid(pid, &status, r.timed_out ? 0 : WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (w == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        r.timed_out = true;
        ::kill(-pid, SIGKILL);
      } else {
        ::usleep(2000);
      }
    }
  }
  for (const pollfd& p : fds) {
    if (p.fd >= 0) ::close(p.fd);
  }
  if (!r.timed_out) {
    if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  }
  return r;
}

// Runs the built mingpt binary with `args` (not including argv[0]).
inline ProcessResult RunMingpt(const std::vector<std::string>& args, const RunOptions& opts = {}) {
  std::vector<std::string> argv = {MINGPT_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, opts);
}

// The error contract: exit `code`, stdout untouched by the error, stderr
// exactly one line "mingpt: error: ..." containing every string of
// `keywords`.
inline ::testing::AssertionResult FailsWith(const ProcessResult& r, int code,
                                            const std::vector<std::string>& keywords) {
  auto fail = [&](const std::string& why) {
    return ::testing::AssertionFailure() << why << "\n" << r.Describe();
  };
  if (r.spawn_failed) return fail("the program could not be started");
  if (r.timed_out) return fail("the program hung (killed after the timeout)");
  if (r.signal != 0) return fail("the program died of a signal");
  if (r.exit_code == 0) return fail("expected a non-zero exit, got 0");
  if (r.exit_code != code) {
    return fail("expected exit " + std::to_string(code) + ", got " + std::to_string(r.exit_code));
  }
  static constexpr std::string_view kPrefix = "mingpt: error: ";
  if (r.err.rfind(kPrefix, 0) != 0) return fail("stderr does not begin with \"mingpt: error: \"");
  const size_t newline = r.err.find('\n');
  if (newline == std::string::npos) return fail("stderr is not terminated by a newline");
  if (newline + 1 != r.err.size()) return fail("stderr holds more than one line");
  const std::string line = r.err.substr(0, newline);
  for (const std::string& k : keywords) {
    if (line.find(k) == std::string::npos) return fail("the error line does not mention '" + k + "'");
  }
  return ::testing::AssertionSuccess();
}

// As FailsWith, but the error line must contain at least one of `any_of`
// (for errors that may rightly be reported in more than one way).
inline ::testing::AssertionResult FailsWithOneOf(const ProcessResult& r, int code,
                                                 const std::vector<std::string>& any_of) {
  ::testing::AssertionResult base = FailsWith(r, code, {});
  if (!base) return base;
  for (const std::string& k : any_of) {
    if (r.err.find(k) != std::string::npos) return ::testing::AssertionSuccess();
  }
  std::string list;
  for (const std::string& k : any_of) list += (list.empty() ? "'" : ", '") + k + "'";
  return ::testing::AssertionFailure() << "the error line mentions none of " << list << "\n"
                                       << r.Describe();
}

inline ::testing::AssertionResult Succeeded(const ProcessResult& r) {
  if (!r.spawn_failed && !r.timed_out && r.signal == 0 && r.exit_code == 0) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected success\n" << r.Describe();
}

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/mingpt-cli-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    // Give back permissions a test may have taken away, then remove.
    for (auto it = std::filesystem::recursive_directory_iterator(
             path_, std::filesystem::directory_options::skip_permission_denied, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_symlink()) ::chmod(it->path().c_str(), 0755);
    }
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void WriteText(const std::string& path, std::string_view text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
}

inline std::string ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

inline bool Exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(std::filesystem::symlink_status(path, ec));
}

// A deterministic English-like text of `n` characters over a small alphabet.
inline std::string SyntheticText(size_t n) {
  static const char* kWords[] = {"the", "king", "shall", "speak", "and", "we", "hear", "him",
                                 "now", "good", "lord", "my", "heart", "is", "true"};
  std::string s;
  uint32_t x = 12345;
  size_t words = 0;
  while (s.size() < n) {
    x = x * 1664525u + 1013904223u;
    s += kWords[(x >> 16) % 15];
    ++words;
    s += (words % 9 == 0) ? ".\n" : " ";
  }
  s.resize(n);
  return s;
}

}  // namespace mingpt::cli_test
