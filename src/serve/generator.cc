#include "serve/generator.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/single_process.h"
#include "model/gpt.h"
#include "train/memory.h"
#include "train/model_checkpoint.h"

namespace mingpt::serve {
namespace {

// Thrown from Sample's token callback to stop a generation; Sample holds
// only RAII state, so unwinding through it is safe.
struct Cancelled {};

// The files of checkpoint directory `dir` as they are now: each entry's name,
// device, inode, size, and modification and change times; "" when it cannot
// be listed. A save makes a new version directory, but a checkpoint can also
// be rewritten in place (copied over): then the path is the same and this is
// not. Taken before the files are read, so that a rewrite meanwhile shows at
// the next look.
std::string FilesIdentity(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return "";
  std::vector<std::string> entries;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    struct stat st;
    if (name == "." || name == ".." ||
        fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      continue;
    }
    std::ostringstream s;
    s << name << '\0' << st.st_dev << ' ' << st.st_ino << ' ' << st.st_size << ' '
      << st.st_mtim.tv_sec << '.' << st.st_mtim.tv_nsec << ' ' << st.st_ctim.tv_sec << '.'
      << st.st_ctim.tv_nsec << '\n';
    entries.push_back(s.str());
  }
  closedir(d);
  std::sort(entries.begin(), entries.end());
  std::string identity;
  for (const std::string& e : entries) identity += e;
  return identity;
}

}  // namespace

StatusOr<GenerateRequest> ParseGenerateRequest(const std::string& body) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::Error("the body is not valid JSON");
  if (!j.is_object()) return Status::Error("the body must be a JSON object");
  GenerateRequest r;
  r.options.top_k = 10;  // mingpt sample's default
  r.options.kv_cache = true;
  bool has_prompt = false;
  for (const auto& [key, v] : j.items()) {
    if (key == "checkpoint") {
      if (v.is_null()) continue;
      if (!v.is_string()) return Status::Error("'checkpoint' must be a string");
      r.checkpoint = v.get<std::string>();
    } else if (key == "prompt") {
      if (!v.is_string()) return Status::Error("'prompt' must be a string");
      r.prompt = v.get<std::string>();
      has_prompt = true;
    } else if (key == "steps") {
      if (!v.is_number_integer()) return Status::Error("'steps' must be an integer");
      const int64_t steps = v.get<int64_t>();
      if (steps < 0 || steps > kMaxSteps) {
        return Status::Error("'steps' must be in [0, " + std::to_string(kMaxSteps) + "]");
      }
      r.options.steps = static_cast<int>(steps);
    } else if (key == "temperature") {
      if (!v.is_number()) return Status::Error("'temperature' must be a number");
      // Sampling takes a float: the double must round to a positive finite one.
      const double t = v.get<double>();
      if (!(t > 0) || t > std::numeric_limits<float>::max() || static_cast<float>(t) <= 0.0f) {
        return Status::Error("'temperature' must be a positive float, in [1.4e-45, 3.4e+38]");
      }
      r.options.temperature = static_cast<float>(t);
    } else if (key == "top_k") {
      if (!v.is_number_integer()) return Status::Error("'top_k' must be an integer");
      const int64_t k = v.get<int64_t>();
      if (k < 0 || k > std::numeric_limits<int>::max()) {
        return Status::Error("'top_k' must be >= 0 and at most the vocabulary size");
      }
      r.options.top_k = static_cast<int>(k);
      r.top_k_given = true;
    } else if (key == "greedy") {
      if (!v.is_boolean()) return Status::Error("'greedy' must be true or false");
      r.options.greedy = v.get<bool>();
    } else if (key == "seed") {
      if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) {
        return Status::Error("'seed' must be a non-negative integer");
      }
      r.options.seed = v.get<uint64_t>();
    } else if (key == "stream") {
      if (!v.is_boolean()) return Status::Error("'stream' must be true or false");
      r.stream = v.get<bool>();
    } else {
      std::string shown = key.size() > 64 ? key.substr(0, 64) + "..." : key;
      return Status::Error(
          "unknown field " +
          nlohmann::json(shown).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace) +
          " (known: checkpoint, prompt, steps, temperature, top_k, greedy, seed, stream)");
    }
  }
  if (!has_prompt || r.prompt.empty()) return Status::Error("'prompt' must be a non-empty string");
  if (r.prompt.size() > kMaxPromptChars) {
    return Status::Error("'prompt' is longer than " + std::to_string(kMaxPromptChars) + " characters");
  }
  return r;
}

Status CheckAgainstTokenizer(const GenerateRequest& request, const CharTokenizer& tokenizer) {
  if (request.top_k_given && !request.options.greedy && request.options.top_k > tokenizer.size()) {
    return Status::Error("'top_k' must be at most the vocabulary size (" +
                         std::to_string(tokenizer.size()) + ")");
  }
  auto ids = tokenizer.Encode(request.prompt);
  if (!ids.ok()) return ids.status().WithContext("'prompt'");
  return Status::Ok();
}

struct Generator::Model {
  std::string dir;
  std::string files;  // FilesIdentity(dir) before it was read
  OpenedCheckpoint ckpt;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<GPT> gpt;
  std::unique_ptr<SingleProcess> params;
};

Generator::Generator(int threads, int max_admitted,
                     std::function<bool(const std::string& real_dir)> allowed)
    : threads_(threads), max_admitted_(max_admitted < 1 ? 1 : max_admitted),
      allowed_(std::move(allowed)), worker_([this] { Work(); }) {}

Generator::~Generator() {
  {
    std::lock_guard<std::mutex> lock(jobs_mu_);
    stopping_ = true;
  }
  jobs_cv_.notify_one();
  worker_.join();
}

void Generator::Work() {
  for (;;) {
    std::packaged_task<void()> job;
    {
      std::unique_lock<std::mutex> lock(jobs_mu_);
      jobs_cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

Generator::Ticket::~Ticket() {
  std::lock_guard<std::mutex> lock(g_->admit_mu_);
  --g_->admitted_;
}

std::shared_ptr<Generator::Ticket> Generator::TryAdmit() {
  std::lock_guard<std::mutex> lock(admit_mu_);
  if (admitted_ >= max_admitted_) return nullptr;
  ++admitted_;
  return std::make_shared<Ticket>(this);
}

StatusOr<Generator::Model*> Generator::Load(const std::string& dir) {
  const std::string files = FilesIdentity(dir);
  if (model_ && model_->dir == dir && !files.empty() && model_->files == files) {
    return model_.get();
  }
  model_.reset();  // one model in memory at a time
  auto m = std::make_unique<Model>();
  m->dir = dir;
  m->files = files;
  MINGPT_ASSIGN_OR_RETURN(m->ckpt, OpenTrainingCheckpoint(dir, /*confined=*/bool(allowed_)));
  if (allowed_ && !allowed_(m->ckpt.checkpoint.HeldPath())) {
    return Status::Error("checkpoint '" + dir + "' is not under the served directory");
  }
  ModelConfig config = m->ckpt.config;
  config.dropout = 0.0f;
  MINGPT_RETURN_IF_ERROR(CheckWeightsMatchConfig(m->ckpt));
  MINGPT_RETURN_IF_ERROR(CheckMemoryFits(config, 1, /*training=*/false));
  m->backend = MakeCpuBackend(threads_);
  m->gpt = std::make_unique<GPT>(m->backend.get(), config, 1);
  m->params = std::make_unique<SingleProcess>(m->backend.get(), m->gpt->layout(), false);
  std::vector<float> host(m->gpt->layout().total_numel(), 0.0f);
  MINGPT_RETURN_IF_ERROR(
      ReadCheckpointTensors(m->ckpt, m->gpt->layout(), host.data(), nullptr, nullptr));
  m->backend->CopyToDevice(m->params->params(), host.data(), host.size() * sizeof(float));
  m->ckpt.checkpoint.Release();  // read: a trainer's saves may remove it
  model_ = std::move(m);
  return model_.get();
}

StatusOr<std::string> Generator::Generate(const std::string& dir, const GenerateRequest& request,
                                          const std::function<bool(std::string_view)>& on_text) {
  std::optional<StatusOr<std::string>> result;
  std::packaged_task<void()> job([&] { result.emplace(Run(dir, request, on_text)); });
  std::future<void> done = job.get_future();
  {
    std::lock_guard<std::mutex> lock(jobs_mu_);
    jobs_.push_back(std::move(job));
  }
  jobs_cv_.notify_one();
  done.get();  // rethrows what the job threw
  return std::move(*result);
}

StatusOr<std::string> Generator::Run(const std::string& dir, const GenerateRequest& request,
                                     const std::function<bool(std::string_view)>& on_text) {
  if (cancelled_) return Status::Error("cancelled: the server is stopping");
  MINGPT_ASSIGN_OR_RETURN(Model * m, Load(dir));
  MINGPT_RETURN_IF_ERROR(CheckAgainstTokenizer(request, m->ckpt.tokenizer));
  auto ids = m->ckpt.tokenizer.Encode(request.prompt);
  if (!ids.ok()) return ids.status().WithContext("'prompt'");
  struct Context {
    const CharTokenizer* tokenizer;
    const std::function<bool(std::string_view)>* on_text;
    const std::atomic<bool>* cancelled;
    std::string text;
  } ctx{&m->ckpt.tokenizer, &on_text, &cancelled_, request.prompt};
  auto on_token = [](int32_t id, void* p) {
    auto* c = static_cast<Context*>(p);
    const std::string& piece = c->tokenizer->Piece(id);
    c->text += piece;
    if (*c->cancelled) throw Cancelled{};
    if (*c->on_text && !(*c->on_text)(piece)) throw Cancelled{};
  };
  SampleOptions options = request.options;
  options.kv_cache = true;
  if (!request.top_k_given) options.top_k = std::min(options.top_k, m->ckpt.tokenizer.size());
  try {
    Sample(m->gpt.get(), m->params.get(), std::move(ids).value(), options, on_token, &ctx);
  } catch (const Cancelled&) {
    return Status::Error("cancelled");
  }
  return std::move(ctx.text);
}

}  // namespace mingpt::serve
