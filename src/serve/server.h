// `mingpt serve`: an HTTP server (cpp-httplib) with one self-contained page
// (serve/page.h) and a JSON API over a runs directory (serve/catalog.h) and
// generation (serve/generator.h):
//
//   GET  /                       the page
//   GET  /v1/checkpoints         {"checkpoints": [{id, path, config, step}], "default": id|null}
//   POST /v1/generate            {checkpoint?, prompt, steps?, temperature?, top_k?, greedy?,
//                                 seed?, stream?} -> {"text", "completion", "checkpoint"}, or
//                                 with stream true text/event-stream: one event per character
//                                 `data: {"text": c}`, then `event: done` with the full
//                                 {"text", "completion", "checkpoint"} (or `event: error`)
//   GET  /v1/runs                {"runs": [{id, config, last_step}]}
//   GET  /v1/runs/{id}/metrics   {"run", "columns", "metrics": {column: [values]}}: at most
//                                2000 rows, evenly spaced, and the last (Catalog::Metrics)
//   GET  /v1/bench               the newest bench.csv: {"path", "columns", "rows"}; 404 if none
//
// Every error is a JSON object {"error": "..."}: 400 for bad input (malformed
// JSON, unknown fields, values out of range, unsafe ids, a malformed
// Content-Length or Range header), 404 for unknown ids and paths, 405 (with
// Allow) for another method on a known path, 413 for bodies over 1 MiB (411
// for a chunked body and 415 for a compressed one: a body is taken only as
// sent, with its Content-Length), 429 when max_admitted generations are
// already running or waiting, 500 for a checkpoint that cannot be loaded.
// Range headers are ignored: every answer is whole. A generation stops when
// its client disconnects.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"

namespace mingpt::serve {

struct ServeOptions {
  std::string root;        // runs directory; "" for none
  std::string checkpoint;  // an extra checkpoint (the default for generation); "" for none
  std::string host = "127.0.0.1";
  int port = 8000;         // 0: any free port (see Server::port)
  int threads = 1;         // the model's CPU threads (as mingpt sample's --num_threads)
  int max_admitted = 4;    // generations running or waiting, at most 256; more get 429.
                           // Connections served at once: this many, and 8 for the rest.
};

class Server {
 public:
  // Checks the options and the directories, and binds the port. Errors: a
  // root or checkpoint that is missing or unreadable, an empty host, a port
  // that cannot be bound (in use, or not permitted).
  static StatusOr<std::unique_ptr<Server>> Create(const ServeOptions& options);
  ~Server();

  int port() const;  // the bound port
  // Serves until Stop (from any thread); running generations are cancelled,
  // connections still waiting for a request are closed.
  Status Run();
  void Stop();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mingpt::serve
