#include "serve/server.h"

#include <httplib.h>
#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdlib>
#include <exception>
#include <functional>
#include <regex>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "serve/catalog.h"
#include "serve/generator.h"
#include "serve/page.h"
#include "train/model_checkpoint.h"
#include "train/options.h"

namespace mingpt::serve {
namespace {

constexpr size_t kMaxBodyBytes = 1 << 20;
// HTTP threads beyond --max_queue: admitted generations hold one thread each
// (running or waiting), so these are left for the page, the listings and the
// 429 answers.
constexpr int kCheapRouteThreads = 8;
constexpr int kMaxAdmitted = 256;

// The routes, for 405 answers: httplib answers 404 to a known path asked
// with another method. HEAD is served by the GET handlers.
struct Route {
  const char* pattern;
  const char* allow;
};
constexpr Route kPage{"/", "GET, HEAD"};
constexpr Route kCheckpoints{"/v1/checkpoints", "GET, HEAD"};
constexpr Route kRuns{"/v1/runs", "GET, HEAD"};
constexpr Route kRunMetrics{R"(/v1/runs/(.+)/metrics)", "GET, HEAD"};
constexpr Route kBench{"/v1/bench", "GET, HEAD"};
constexpr Route kGenerate{"/v1/generate", "POST"};

const Route* FindRoute(const std::string& path) {
  static const std::vector<std::pair<std::regex, const Route*>> routes = [] {
    std::vector<std::pair<std::regex, const Route*>> r;
    for (const Route* route : {&kPage, &kCheckpoints, &kRuns, &kRunMetrics, &kBench, &kGenerate}) {
      r.emplace_back(std::regex(route->pattern), route);
    }
    return r;
  }();
  for (const auto& [re, route] : routes) {
    if (std::regex_match(path, re)) return route;
  }
  return nullptr;
}

// httplib slices every response, errors included, by the request's Range
// header (a 200 with a Content-Range, a 206, an empty 416). The API's answers
// are computed afresh at each request, so a part of one means nothing: the
// parsed ranges are dropped and whole responses go out. (The Request is a
// non-const object of httplib's, handed to handlers as const, so clearing it
// is defined.)
void DropRanges(const httplib::Request& req) { const_cast<httplib::Request&>(req).ranges.clear(); }

bool IsDecimal(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// Why `id` (of a `what`: "run", "checkpoint") is refused; "" when it may be
// matched against the catalog.
std::string RefusedId(const std::string& id, const std::string& what) {
  if (id.size() > kMaxIdChars) {
    return what + " id is longer than " + std::to_string(kMaxIdChars) + " characters";
  }
  if (!IsSafeId(id)) return "refused " + what + " id (outside the runs directory)";
  return "";
}

// ---- connection sockets ----
//
// Debian's cpp-httplib (0.11) shows a handler no socket (later versions have
// Request::is_connection_closed), and has no deadline for a request's
// headers. Its connections are found among the process's descriptors by
// their addresses instead: to cancel a generation whose client has gone, and
// to end the connections still open when the server stops.

struct SocketEnds {
  std::string local_addr, remote_addr;
  int local_port = -1, remote_port = -1;
};

// As httplib writes them into Request (numeric host, port).
bool AddressAndPort(const sockaddr_storage& addr, socklen_t len, std::string* host, int* port) {
  if (addr.ss_family == AF_INET) {
    *port = ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    *port = ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  } else {
    return false;
  }
  char buf[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, buf, sizeof(buf), nullptr, 0,
                  NI_NUMERICHOST) != 0) {
    return false;
  }
  *host = buf;
  return true;
}

// Calls `f` with each connected TCP socket of this process and its ends.
void ForEachConnection(const std::function<void(int, const SocketEnds&)>& f) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return;
  while (const dirent* d = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(d->d_name, &end, 10);
    struct stat st;
    if (*end != '\0' || end == d->d_name || fd == dirfd(dir) || fstat(fd, &st) != 0 ||
        !S_ISSOCK(st.st_mode)) {
      continue;
    }
    sockaddr_storage local{}, remote{};
    socklen_t local_len = sizeof(local), remote_len = sizeof(remote);
    SocketEnds ends;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) == 0 &&
        getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &remote_len) == 0 &&
        AddressAndPort(local, local_len, &ends.local_addr, &ends.local_port) &&
        AddressAndPort(remote, remote_len, &ends.remote_addr, &ends.remote_port)) {
      f(static_cast<int>(fd), ends);
    }
  }
  closedir(dir);
}

// The socket `req` came on, or -1. The thread running the handler owns it
// until the handler returns, so its number is not reused meanwhile.
int ConnectionSocket(const httplib::Request& req) {
  int found = -1;
  ForEachConnection([&](int fd, const SocketEnds& e) {
    if (e.local_port == req.local_port && e.remote_port == req.remote_port &&
        e.local_addr == req.local_addr && e.remote_addr == req.remote_addr) {
      found = fd;
    }
  });
  return found;
}

// The client closed the connection (or shut down its sending side: it will
// not ask for more, and httplib reads that as gone too).
bool PeerClosed(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP)) return true;
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void SendJson(httplib::Response& res, int status, const nlohmann::json& j) {
  res.status = status;
  res.set_content(Dump(j), "application/json");
}

void SendError(httplib::Response& res, int status, const std::string& message) {
  SendJson(res, status, {{"error", message}});
}

std::string SseEvent(const char* event, const nlohmann::json& data) {
  std::string s;
  if (event) s += std::string("event: ") + event + "\n";
  s += "data: " + Dump(data) + "\n\n";
  return s;
}

}  // namespace

struct Server::Impl {
  Impl(const ServeOptions& o, Catalog c)
      : options(o),
        catalog(std::move(c)),
        generator(o.threads, o.max_admitted,
                  [this](const std::string& real_dir) { return catalog.MayRead(real_dir); }) {}

  void Routes();
  void Generate(const httplib::Request& req, httplib::Response& res);

  ServeOptions options;
  Catalog catalog;
  Generator generator;
  httplib::Server http;
  int port = 0;
  std::atomic<bool> stop_requested{false};
};

void Server::Impl::Routes() {
  http.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    DropRanges(req);
    // Runs before httplib reads a body, and is the only place that bounds
    // one: httplib 0.11 applies the payload limit (kMaxBodyBytes) to a
    // Content-Length alone, and reads a chunked body, a body decompressed
    // (gzip, deflate, br) or one without a length whole into memory. So the
    // only body taken is a plain one of a valid Content-Length.
    if (req.has_header("Transfer-Encoding")) {
      res.set_header("Connection", "close");  // the body is not read
      SendError(res, 411, "a request body must be sent with a Content-Length, not chunked");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (req.has_header("Content-Encoding")) {
      res.set_header("Connection", "close");
      SendError(res, 415, "compressed request bodies are not accepted (Content-Encoding)");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!req.has_header("Content-Length")) {
      // HTTP gives such a request no body (RFC 9112, 6.3); httplib would read
      // one of a POST until the client closes the connection. (Written into
      // httplib's non-const Request, as DropRanges does.)
      const_cast<httplib::Request&>(req).set_header("Content-Length", "0");
    } else if (!IsDecimal(req.get_header_value("Content-Length"))) {
      // A negative length would read as a huge unsigned one there (413).
      res.set_header("Connection", "close");  // the body's end is unknown
      SendError(res, 400, "malformed Content-Length header");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http.Get(kPage.pattern, [](const httplib::Request&, httplib::Response& res) {
    const std::string_view page = IndexPage();
    res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
  });
  http.Get(kCheckpoints.pattern, [this](const httplib::Request&, httplib::Response& res) {
    nlohmann::json list = nlohmann::json::array();
    for (const CheckpointEntry& e : catalog.Checkpoints()) {
      list.push_back({{"id", e.id}, {"path", e.path}, {"config", e.config}, {"step", e.step}});
    }
    auto def = catalog.FindCheckpoint("");
    SendJson(res, 200, {{"checkpoints", std::move(list)},
                        {"default", def.ok() ? nlohmann::json(def->id) : nlohmann::json(nullptr)}});
  });
  http.Get(kRuns.pattern, [this](const httplib::Request&, httplib::Response& res) {
    nlohmann::json list = nlohmann::json::array();
    for (const RunEntry& r : catalog.Runs()) {
      list.push_back({{"id", r.id}, {"config", r.config}, {"last_step", r.last_step}});
    }
    SendJson(res, 200, {{"runs", std::move(list)}});
  });
  http.Get(kRunMetrics.pattern, [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (const std::string why = RefusedId(id, "run"); !why.empty()) return SendError(res, 400, why);
    auto run = catalog.FindRun(id);
    if (!run.ok()) return SendError(res, 404, run.status().message());
    auto metrics = catalog.Metrics(*run);
    if (!metrics.ok()) return SendError(res, 500, metrics.status().message());
    SendJson(res, 200, *metrics);
  });
  http.Get(kBench.pattern, [this](const httplib::Request&, httplib::Response& res) {
    auto bench = catalog.Bench();
    if (!bench) return SendError(res, 404, "no bench.csv under the runs directory");
    SendJson(res, 200, *bench);
  });
  http.Post(kGenerate.pattern, [this](const httplib::Request& req, httplib::Response& res) {
    Generate(req, res);
  });
  // httplib's own errors (the handlers' have a body already) as JSON.
  http.set_error_handler(httplib::Server::HandlerWithResponse(
      [](const httplib::Request& req, httplib::Response& res) {
    DropRanges(req);  // an error before routing: none dropped yet
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Handled;
    const Route* route = res.status == 404 ? FindRoute(req.path) : nullptr;
    std::string why;
    if (route) {
      res.status = 405;
      res.set_header("Allow", route->allow);
      why = "method not allowed (allowed: " + std::string(route->allow) + ")";
    } else if (res.status == 416) {
      // A Range header httplib cannot parse, refused before routing; ranges
      // are ignored (see DropRanges), so it is the request that is bad.
      res.status = 400;
      why = "malformed Range header";
    } else {
      why = res.status == 404   ? "not found"
            : res.status == 413 ? "request body too large"
            : res.status == 400 ? "bad request"
                                : "HTTP error " + std::to_string(res.status);
    }
    SendJson(res, res.status, {{"error", why}});
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res,
                                std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what += std::string(": ") + e.what();
    } catch (...) {
    }
    SendError(res, 500, what);
  });
}

void Server::Impl::Generate(const httplib::Request& req, httplib::Response& res) {
  auto parsed = ParseGenerateRequest(req.body);
  if (!parsed.ok()) return SendError(res, 400, parsed.status().message());
  GenerateRequest request = std::move(parsed).value();
  if (!request.checkpoint.empty()) {
    if (const std::string why = RefusedId(request.checkpoint, "checkpoint"); !why.empty()) {
      return SendError(res, 400, why);
    }
  }
  auto entry = catalog.FindCheckpoint(request.checkpoint);
  if (!entry.ok()) return SendError(res, 404, entry.status().message());
  // The checks that need the vocabulary, before anything is streamed. The
  // entry names a version (symlinks resolved); opening holds it (see
  // io/checkpoint.h) until the generator has read it. A save that removed it
  // since the catalog's look is met by looking once more. Read confined, from
  // a directory checked to be one the server may read (as the generator
  // checks the one it loads): a checkpoint swapped for a link out of the
  // root after the catalog's look is refused.
  auto ckpt = OpenTrainingCheckpoint(entry->dir, /*confined=*/true);
  if (!ckpt.ok()) {
    entry = catalog.FindCheckpoint(request.checkpoint);
    if (!entry.ok()) return SendError(res, 404, entry.status().message());
    ckpt = OpenTrainingCheckpoint(entry->dir, /*confined=*/true);
  }
  if (!ckpt.ok()) return SendError(res, 500, ckpt.status().message());
  if (!catalog.MayRead(ckpt->checkpoint.HeldPath())) {
    return SendError(res, 404, "checkpoint '" + entry->id + "' is not under the served directory");
  }
  if (Status s = CheckAgainstTokenizer(request, ckpt->tokenizer); !s.ok()) {
    return SendError(res, 400, s.message());
  }
  std::shared_ptr<Generator::Ticket> ticket = generator.TryAdmit();
  if (!ticket) {
    return SendError(res, 429, "busy: " + std::to_string(options.max_admitted) +
                                   " generations are running or waiting; try again later");
  }
  const std::string id = entry->id, dir = entry->dir;
  if (!request.stream) {
    // A client that has gone stops its generation, as a stream's does when
    // writing to it fails, so that abandoned requests do not hold the queue.
    const int sock = ConnectionSocket(req);
    std::function<bool(std::string_view)> connected;
    if (sock >= 0) connected = [sock](std::string_view) { return !PeerClosed(sock); };
    auto text = generator.Generate(dir, request, connected);
    if (!text.ok()) return SendError(res, 500, text.status().message());
    return SendJson(res, 200, {{"text", *text},
                               {"completion", text->substr(request.prompt.size())},
                               {"checkpoint", id}});
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, ticket, request, id, dir, hold = ckpt->checkpoint.hold](size_t,
                                                                     httplib::DataSink& sink) {
        // httplib calls this after routing, outside its exception handler:
        // an exception here would end the server.
        const StatusOr<std::string> text = CatchExceptions([&] {
          return generator.Generate(dir, request, [&sink](std::string_view chunk) {
            const std::string event = SseEvent(nullptr, {{"text", std::string(chunk)}});
            return sink.write(event.data(), event.size());
          });
        });
        std::string last;
        if (text.ok()) {
          last = SseEvent("done", {{"text", *text},
                                   {"completion", text->substr(request.prompt.size())},
                                   {"checkpoint", id}});
        } else {
          last = SseEvent("error", {{"error", text.status().message()}});
        }
        const bool ok = sink.write(last.data(), last.size());
        sink.done();
        return ok;
      });
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() {
  if (impl_) Stop();
}

StatusOr<std::unique_ptr<Server>> Server::Create(const ServeOptions& options) {
  if (options.port < 0 || options.port > 65535) {
    return Status::Error("--port must be in [0, 65535], got " + std::to_string(options.port));
  }
  if (options.host.empty()) return Status::Error("--host must not be empty");
  MINGPT_RETURN_IF_ERROR(ValidateNumThreads(options.threads));  // as mingpt sample's
  if (options.max_admitted <= 0 || options.max_admitted > kMaxAdmitted) {
    return Status::Error("--max_queue must be in [1, " + std::to_string(kMaxAdmitted) + "], got " +
                         std::to_string(options.max_admitted));
  }
  MINGPT_ASSIGN_OR_RETURN(Catalog catalog, Catalog::Create(options.root, options.checkpoint));
  if (!options.checkpoint.empty()) {
    // Fail at startup, not at the first request, for a checkpoint that cannot load.
    auto ckpt = OpenTrainingCheckpoint(options.checkpoint);
    if (!ckpt.ok()) return ckpt.status().WithContext("--checkpoint '" + options.checkpoint + "'");
    MINGPT_RETURN_IF_ERROR(CheckWeightsMatchConfig(*ckpt));
  }
  auto impl = std::make_unique<Impl>(options, std::move(catalog));
  const int http_threads = options.max_admitted + kCheapRouteThreads;
  impl->http.new_task_queue = [http_threads] { return new httplib::ThreadPool(http_threads); };
  impl->http.set_payload_max_length(kMaxBodyBytes);
  // Each connection holds a thread: an idle one for at most 2 s, a silent
  // or unread one for 5 s per read or write. (A client trickling header lines
  // holds it longer: httplib 0.11 has no deadline for a whole request.)
  impl->http.set_keep_alive_timeout(2);
  impl->http.set_read_timeout(5, 0);
  impl->http.set_write_timeout(5, 0);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, with which a
  // second server binds a port another one listens on instead of failing.
  impl->http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  impl->Routes();
  if (options.port == 0) {
    impl->port = impl->http.bind_to_any_port(options.host);
    if (impl->port <= 0) {
      return Status::Error("cannot listen on " + options.host + " (no free port, or a bad --host)");
    }
  } else {
    if (!impl->http.bind_to_port(options.host, options.port)) {
      return Status::Error("cannot listen on " + options.host + ":" + std::to_string(options.port) +
                           " (port in use, not permitted, or a bad --host)");
    }
    impl->port = options.port;
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }

Status Server::Run() {
  if (impl_->stop_requested) return Status::Ok();
  if (!impl_->http.listen_after_bind() && impl_->http.is_running()) {
    return Status::Error("the server stopped unexpectedly");
  }
  return Status::Ok();
}

void Server::Stop() {
  impl_->stop_requested = true;
  impl_->generator.CancelAll();
  impl_->http.stop();
  // Run returns once every connection's thread has ended; ending the reading
  // side of each connection ends a wait for a request (however slowly its
  // client sends it) at once, and lets responses being written finish.
  const int port = impl_->port;
  ForEachConnection([port](int fd, const SocketEnds& e) {
    if (e.local_port == port) shutdown(fd, SHUT_RD);
  });
}

}  // namespace mingpt::serve
