// Generation for `mingpt serve`: the request's JSON checked field by field,
// and one model at a time on a thread of its own, with a bounded number of
// requests admitted (running or waiting); the text comes from
// train/inference.h's Sample with the KV cache, exactly as `mingpt sample`
// prints it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "core/status.h"
#include "data/char_dataset.h"
#include "train/inference.h"

namespace mingpt::serve {

inline constexpr int kMaxSteps = 100000;
inline constexpr size_t kMaxPromptChars = 10000;

// POST /v1/generate's body: {checkpoint?, prompt, steps?, temperature?,
// top_k?, greedy?, seed?, stream?}; absent fields take `mingpt sample`'s
// defaults (500 steps, temperature 1, top_k 10 or the vocabulary's size if
// smaller, seed 42).
struct GenerateRequest {
  std::string checkpoint;  // an id of the catalog; "" for the default
  std::string prompt;
  SampleOptions options;   // kv_cache always true
  bool top_k_given = false;
  bool stream = false;
};

// Errors (each a client error): not a JSON object, unknown fields, wrong
// types, an empty prompt or one over kMaxPromptChars, steps outside
// [0, kMaxSteps], a temperature outside the positive floats, top_k < 0, a
// negative seed.
StatusOr<GenerateRequest> ParseGenerateRequest(const std::string& body);

// The checks that need the model: a top_k given (and not greedy) <= the
// vocabulary, and every prompt character in it.
Status CheckAgainstTokenizer(const GenerateRequest& request, const CharTokenizer& tokenizer);

class Generator {
 public:
  // `threads`: CPU threads of the model; `max_admitted` (>= 1): requests
  // running or waiting for the model at once. `allowed`, if given, is asked
  // of every checkpoint's real directory (Checkpoint::HeldPath, read
  // confined: no file of it a symlink) before its weights are read: the
  // server's root. Starts the generation thread.
  Generator(int threads, int max_admitted,
            std::function<bool(const std::string& real_dir)> allowed = {});
  // Ends the generation thread; no Generate may be in progress.
  ~Generator();

  // A place among the admitted requests, given back when the last copy goes.
  class Ticket {
   public:
    explicit Ticket(Generator* g) : g_(g) {}
    ~Ticket();
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

   private:
    Generator* g_;
  };
  // nullptr when max_admitted requests are already in.
  std::shared_ptr<Ticket> TryAdmit();

  // Loads the checkpoint at `dir` (unless it is the one loaded and its files
  // are unchanged: the same inodes, sizes and times), checks the request
  // against its tokenizer and generates, waiting for the requests before it
  // (first come, first served). on_text receives each generated character,
  // on the generation thread; returning false stops the generation (an
  // error "cancelled"). Returns the prompt and the generated text, as
  // `mingpt sample` prints them. Needs a ticket held by the caller.
  StatusOr<std::string> Generate(const std::string& dir, const GenerateRequest& request,
                                 const std::function<bool(std::string_view)>& on_text);

  // Makes every running and later generation stop at its next character.
  void CancelAll() { cancelled_ = true; }

 private:
  struct Model;
  // On the generation thread only.
  StatusOr<Model*> Load(const std::string& dir);
  StatusOr<std::string> Run(const std::string& dir, const GenerateRequest& request,
                            const std::function<bool(std::string_view)>& on_text);
  void Work();

  const int threads_, max_admitted_;
  const std::function<bool(const std::string&)> allowed_;
  std::mutex admit_mu_;
  int admitted_ = 0;
  std::unique_ptr<Model> model_;
  std::atomic<bool> cancelled_{false};
  // Every generation runs on `worker_`: OpenMP's thread count (which the CPU
  // backend sets) and its pool of threads belong to the thread that starts
  // the parallel work, so one generating thread keeps --num_threads in force
  // and one pool alive, whichever HTTP thread asked.
  std::mutex jobs_mu_;
  std::condition_variable jobs_cv_;
  std::deque<std::packaged_task<void()>> jobs_;
  bool stopping_ = false;
  std::thread worker_;  // last: started once the members above exist
};

}  // namespace mingpt::serve
