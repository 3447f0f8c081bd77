// serve: the HTTP server of serve/server.h until Ctrl-C (SIGINT) or SIGTERM.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "cli/commands.h"
#include "serve/server.h"

namespace mingpt::cli {

Command AddServe(CLI::App* app) {
  struct Flags {
    serve::ServeOptions o;
    CLI::Option* root_opt = nullptr;
  };
  auto f = std::make_shared<Flags>();
  f->o.root = "runs";
  f->o.port = 8000;
  app->add_option("--checkpoint", f->o.checkpoint,
                  "Checkpoint directory to generate from by default (any found under --root too)")
      ->check(NotEmpty());
  f->root_opt = app->add_option("--root", f->o.root,
                                "Runs directory: its runs' metrics.csv and checkpoints, bench.csv")
                    ->check(NotEmpty())
                    ->capture_default_str();
  app->add_option("--port", f->o.port, "TCP port (0: any free one, printed)")->capture_default_str();
  app->add_option("--host", f->o.host, "Address to listen on (0.0.0.0: every interface)")
      ->capture_default_str();
  app->add_option("--num_threads", f->o.threads, "CPU threads of the model")->capture_default_str();
  app->add_option("--max_queue", f->o.max_admitted,
                  "Generations running or waiting at once (at most 256); more are refused (HTTP 429)")
      ->capture_default_str();
  return [f]() -> Status {
    serve::ServeOptions o = f->o;
    std::error_code ec;
    if (f->root_opt->count() == 0 && !std::filesystem::is_directory(o.root, ec)) {
      if (o.checkpoint.empty()) {
        return Status::Error("nothing to serve: no --checkpoint, and no runs directory '" + o.root +
                             "' (pass --root)");
      }
      o.root.clear();  // the default runs/ is optional
    }
    // SIGINT and SIGTERM go to one thread that stops the server; every
    // other thread (the server's pool included) is started with them blocked.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGUSR1);  // ends the waiting thread when the server ends by itself
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    MINGPT_ASSIGN_OR_RETURN(std::unique_ptr<serve::Server> server, serve::Server::Create(o));
    // A URL writes an IPv6 address in brackets: http://[::1]:8000/.
    const std::string host = o.host.find(':') == std::string::npos ? o.host : "[" + o.host + "]";
    std::printf("mingpt serve: listening on http://%s:%d/ (Ctrl-C stops)\n", host.c_str(),
                server->port());
    std::fflush(stdout);
    serve::Server* s = server.get();
    std::thread waiter([s, signals] {
      int sig = 0;
      sigwait(&signals, &sig);
      if (sig != SIGUSR1) s->Stop();
    });
    Status status = server->Run();
    pthread_kill(waiter.native_handle(), SIGUSR1);
    waiter.join();
    server.reset();
    std::fprintf(stderr, "mingpt serve: stopped\n");
    return status;
  };
}

}  // namespace mingpt::cli
