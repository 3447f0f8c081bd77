#include "serve/server.h"

#include <httplib.h>

#include <atomic>
#include <exception>
#include <utility>

#include <nlohmann/json.hpp>

#include "serve/catalog.h"
#include "serve/generator.h"
#include "serve/page.h"
#include "train/model_checkpoint.h"

namespace mingpt::serve {
namespace {

constexpr size_t kMaxBodyBytes = 1 << 20;

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
      : options(o), catalog(std::move(c)), generator(o.threads, o.max_admitted) {}

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
  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    const std::string_view page = IndexPage();
    res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
  });
  http.Get("/v1/checkpoints", [this](const httplib::Request&, httplib::Response& res) {
    nlohmann::json list = nlohmann::json::array();
    for (const CheckpointEntry& e : catalog.Checkpoints()) {
      list.push_back({{"id", e.id}, {"path", e.path}, {"config", e.config}, {"step", e.step}});
    }
    auto def = catalog.FindCheckpoint("");
    SendJson(res, 200, {{"checkpoints", std::move(list)},
                        {"default", def.ok() ? nlohmann::json(def->id) : nlohmann::json(nullptr)}});
  });
  http.Get("/v1/runs", [this](const httplib::Request&, httplib::Response& res) {
    nlohmann::json list = nlohmann::json::array();
    for (const RunEntry& r : catalog.Runs()) {
      list.push_back({{"id", r.id}, {"config", r.config}, {"last_step", r.last_step}});
    }
    SendJson(res, 200, {{"runs", std::move(list)}});
  });
  http.Get(R"(/v1/runs/(.+)/metrics)", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (!IsSafeId(id)) return SendError(res, 400, "refused run id (outside the runs directory)");
    auto run = catalog.FindRun(id);
    if (!run.ok()) return SendError(res, 404, run.status().message());
    auto metrics = catalog.Metrics(*run);
    if (!metrics.ok()) return SendError(res, 500, metrics.status().message());
    SendJson(res, 200, *metrics);
  });
  http.Get("/v1/bench", [this](const httplib::Request&, httplib::Response& res) {
    auto bench = catalog.Bench();
    if (!bench) return SendError(res, 404, "no bench.csv under the runs directory");
    SendJson(res, 200, *bench);
  });
  http.Post("/v1/generate", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(req, res);
  });
  http.set_error_handler(httplib::Server::HandlerWithResponse(
      [](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) {
      const std::string why = res.status == 404   ? "not found"
                              : res.status == 413 ? "request body too large"
                              : res.status == 405 ? "method not allowed"
                              : res.status == 400 ? "bad request"
                                                  : "HTTP error " + std::to_string(res.status);
      SendJson(res, res.status, {{"error", why}});
    }
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
  if (!request.checkpoint.empty() && !IsSafeId(request.checkpoint)) {
    return SendError(res, 400, "refused checkpoint id (outside the runs directory)");
  }
  auto entry = catalog.FindCheckpoint(request.checkpoint);
  if (!entry.ok()) return SendError(res, 404, entry.status().message());
  // The checks that need the vocabulary, before anything is streamed.
  auto ckpt = OpenTrainingCheckpoint(entry->dir);
  if (!ckpt.ok()) return SendError(res, 500, ckpt.status().message());
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
    auto text = generator.Generate(dir, request, nullptr);
    if (!text.ok()) return SendError(res, 500, text.status().message());
    return SendJson(res, 200, {{"text", *text},
                               {"completion", text->substr(request.prompt.size())},
                               {"checkpoint", id}});
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, ticket, request, id, dir](size_t, httplib::DataSink& sink) {
        auto text = generator.Generate(dir, request, [&sink](std::string_view chunk) {
          const std::string event = SseEvent(nullptr, {{"text", std::string(chunk)}});
          return sink.write(event.data(), event.size());
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
  if (options.threads <= 0) return Status::Error("--num_threads must be positive");
  if (options.max_admitted <= 0) return Status::Error("--max_queue must be positive");
  MINGPT_ASSIGN_OR_RETURN(Catalog catalog, Catalog::Create(options.root, options.checkpoint));
  if (!options.checkpoint.empty()) {
    // Fail at startup, not at the first request, for a checkpoint that cannot load.
    auto ckpt = OpenTrainingCheckpoint(options.checkpoint);
    if (!ckpt.ok()) return ckpt.status().WithContext("--checkpoint '" + options.checkpoint + "'");
    MINGPT_RETURN_IF_ERROR(CheckWeightsMatchConfig(*ckpt));
  }
  auto impl = std::make_unique<Impl>(options, std::move(catalog));
  const int http_threads = options.http_threads > 0 ? options.http_threads : 16;
  impl->http.new_task_queue = [http_threads] { return new httplib::ThreadPool(http_threads); };
  impl->http.set_payload_max_length(kMaxBodyBytes);
  impl->http.set_keep_alive_timeout(2);
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
}

}  // namespace mingpt::serve
