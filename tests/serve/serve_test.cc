// `mingpt serve`'s HTTP API, served in-process on a free port over a runs
// directory holding a copy of the shared tiny run (tests/cli/trained_checkpoint.h),
// a bench.csv and a symlink that leads out of the root; and the binary as a
// child for its flag errors and Ctrl-C.
#include <httplib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/trained_checkpoint.h"
#include "serve/server.h"

namespace mingpt::serve {
namespace {

using cli_test::CpPath;
using cli_test::Exists;
using cli_test::FailsWith;
using cli_test::ProcessResult;
using cli_test::RunMingpt;
using cli_test::RunOptions;
using cli_test::RunProcess;
using cli_test::SharedTrainedRun;
using cli_test::Succeeded;
using cli_test::TempDir;
using cli_test::WriteText;
using json = nlohmann::json;

struct Event {
  std::string name;  // "message" when the event has no name
  json data;
};

// Splits a text/event-stream body into its events.
std::vector<Event> ParseEvents(const std::string& body) {
  std::vector<Event> events;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    Event e{"message", nullptr};
    std::string data;
    size_t line = pos;
    while (line < end) {
      size_t nl = body.find('\n', line);
      if (nl == std::string::npos || nl > end) nl = end;
      const std::string l = body.substr(line, nl - line);
      if (l.rfind("event: ", 0) == 0) e.name = l.substr(7);
      if (l.rfind("data: ", 0) == 0) data += l.substr(6);
      line = nl + 1;
    }
    e.data = json::parse(data, nullptr, false);
    events.push_back(std::move(e));
    pos = end + 2;
  }
  return events;
}

class ServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ::signal(SIGPIPE, SIG_IGN);
    const cli_test::TrainedRun& run = SharedTrainedRun();
    if (!run.ok) return;
    tmp_ = new TempDir();
    root_ = *tmp_ / "runs";
    const std::string outside = *tmp_ / "outside";
    ::mkdir(root_.c_str(), 0755);
    ::mkdir(outside.c_str(), 0755);
    // runs/run1: the trained run, its checkpoint symlinks kept.
    if (!Succeeded(RunProcess({CpPath(), "-r", run.root, root_ + "/run1"}))) return;
    // outside/leak: a run outside the root, reached through runs/evil.
    if (!Succeeded(RunProcess({CpPath(), "-r", run.root, outside + "/leak"}))) return;
    if (::symlink((outside + "/leak").c_str(), (root_ + "/evil").c_str()) != 0) return;
    // runs/bench/1/bench.csv
    ::mkdir((root_ + "/bench").c_str(), 0755);
    ::mkdir((root_ + "/bench/1").c_str(), 0755);
    WriteText(root_ + "/bench/1/bench.csv",
              "Plugin,Plugin Alias,Model,Tokens per second,Status\n"
              "\"DeepSpeed ZeRO Stage 2, w checkpointing\",deepspeed_stage_2,gpt-nano,1234.5,ok\n"
              "DDP,ddp,gpt-nano,2000,ok\n");
    ServeOptions o;
    o.root = root_;
    o.port = 0;
    o.max_admitted = 3;
    auto server = Server::Create(o);
    if (!server.ok()) {
      ADD_FAILURE() << server.status().message();
      return;
    }
    server_ = std::move(server).value().release();
    port_ = server_->port();
    thread_ = new std::thread([] { (void)server_->Run(); });
    httplib::Client c("127.0.0.1", port_);
    for (int i = 0; i < 200; ++i) {
      if (auto r = c.Get("/v1/checkpoints"); r && r->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  static void TearDownTestSuite() {
    if (server_) server_->Stop();
    if (thread_) thread_->join();
    delete thread_;
    delete server_;
    delete tmp_;
    thread_ = nullptr;
    server_ = nullptr;
    tmp_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(SharedTrainedRun().ok) << SharedTrainedRun().result.Describe();
    ASSERT_NE(server_, nullptr) << "the server did not start";
    ASSERT_TRUE(Exists(root_ + "/run1/checkpoints/last/meta.json"));
  }

  static std::unique_ptr<httplib::Client> Client() {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
    c->set_read_timeout(60, 0);
    return c;
  }
  static json GetJson(const std::string& path, int expected_status = 200) {
    auto r = Client()->Get(path.c_str());
    EXPECT_TRUE(r) << path << ": " << httplib::to_string(r.error());
    if (!r) return nullptr;
    EXPECT_EQ(r->status, expected_status) << path << ": " << r->body;
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json") << path;
    return json::parse(r->body, nullptr, false);
  }
  static httplib::Result Post(const std::string& body) {
    return Client()->Post("/v1/generate", body, "application/json");
  }
  // POSTs `body` and expects `status` with a JSON {"error": "..."}.
  static void ExpectError(const std::string& body, int status) {
    auto r = Post(body);
    ASSERT_TRUE(r) << body << ": " << httplib::to_string(r.error());
    EXPECT_EQ(r->status, status) << body.substr(0, 200) << " -> " << r->body;
    const json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r->body;
    EXPECT_TRUE(j.contains("error") && j["error"].is_string() && !j["error"].get<std::string>().empty())
        << r->body;
  }
  // `mingpt sample`'s stdout for these flags.
  static std::string SampleText(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {"sample", "--checkpoint", root_ + "/run1/checkpoints/last",
                                     "--num_threads", "1"};
    args.insert(args.end(), flags.begin(), flags.end());
    const ProcessResult p = RunMingpt(args);
    EXPECT_TRUE(Succeeded(p));
    return p.out;
  }

  static TempDir* tmp_;
  static std::string root_;
  static Server* server_;
  static std::thread* thread_;
  static int port_;
};
TempDir* ServeTest::tmp_ = nullptr;
std::string ServeTest::root_;
Server* ServeTest::server_ = nullptr;
std::thread* ServeTest::thread_ = nullptr;
int ServeTest::port_ = 0;

TEST_F(ServeTest, PageIsSelfContained) {
  auto r = Client()->Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/html; charset=utf-8");
  for (const char* part : {"<!DOCTYPE html>", "/v1/generate", "/v1/runs", "/v1/bench", "<script>",
                           "getReader", "Generate", "Runs", "Benchmarks"}) {
    EXPECT_NE(r->body.find(part), std::string::npos) << part;
  }
  for (const char* external : {"src=\"http", "href=\"http", "src='http", "@import", "cdn"}) {
    EXPECT_EQ(r->body.find(external), std::string::npos) << external;
  }
}

TEST_F(ServeTest, ListsCheckpointsUnderTheRootOnly) {
  const json j = GetJson("/v1/checkpoints");
  ASSERT_TRUE(j.contains("checkpoints"));
  bool found_last = false;
  for (const json& c : j["checkpoints"]) {
    const std::string id = c["id"];
    EXPECT_EQ(id.find("evil"), std::string::npos) << "listed a checkpoint outside the root: " << id;
    EXPECT_EQ(c["path"], id);
    if (id == "run1/checkpoints/last") {
      found_last = true;
      EXPECT_EQ(c["step"], 2);
      EXPECT_EQ(c["config"]["n_layer"], 1);
      EXPECT_EQ(c["config"]["n_embd"], 16);
    }
  }
  EXPECT_TRUE(found_last) << j.dump();
  EXPECT_TRUE(j["default"].is_string()) << j.dump();
}

TEST_F(ServeTest, GeneratesTheSameTextAsMingptSample) {
  const json body = {{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the king"},
                     {"steps", 40}, {"temperature", 0.8}, {"top_k", 5}, {"seed", 7}};
  auto r = Post(body.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["text"].get<std::string>() + "\n",
            SampleText({"--prompt", "the king", "--steps", "40", "--temperature", "0.8", "--top_k",
                        "5", "--seed", "7"}));
  EXPECT_EQ(j["completion"].get<std::string>().size(), 40u);
  EXPECT_EQ(j["checkpoint"], "run1/checkpoints/last");

  // Greedy, and the defaults (500 steps, temperature 1, top_k 10, seed 42).
  auto g = Post(json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "we"}, {"steps", 25},
                     {"greedy", true}}.dump());
  ASSERT_TRUE(g);
  ASSERT_EQ(g->status, 200) << g->body;
  EXPECT_EQ(json::parse(g->body)["text"].get<std::string>() + "\n",
            SampleText({"--prompt", "we", "--steps", "25", "--greedy"}));
  auto d = Post(json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "my lord"}}.dump());
  ASSERT_TRUE(d);
  ASSERT_EQ(d->status, 200) << d->body;
  EXPECT_EQ(json::parse(d->body)["text"].get<std::string>() + "\n",
            SampleText({"--prompt", "my lord"}));
}

TEST_F(ServeTest, StreamsOneEventPerCharacterThenDone) {
  const json body = {{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"}, {"steps", 30},
                     {"seed", 3}, {"stream", true}};
  auto r = Post(body.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  const std::vector<Event> events = ParseEvents(r->body);
  ASSERT_EQ(events.size(), 31u) << r->body;
  std::string streamed;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    EXPECT_EQ(events[i].name, "message");
    ASSERT_TRUE(events[i].data.is_object()) << r->body;
    const std::string t = events[i].data["text"];
    EXPECT_EQ(t.size(), 1u);
    streamed += t;
  }
  const Event& done = events.back();
  EXPECT_EQ(done.name, "done");
  EXPECT_EQ(done.data["completion"], streamed);
  EXPECT_EQ(done.data["text"], "the" + streamed);
  json plain = body;
  plain["stream"] = false;
  auto p = Post(plain.dump());
  ASSERT_TRUE(p);
  EXPECT_EQ(json::parse(p->body)["text"], done.data["text"]);
  EXPECT_EQ(done.data["text"].get<std::string>() + "\n",
            SampleText({"--prompt", "the", "--steps", "30", "--seed", "3"}));
}

TEST_F(ServeTest, RunsAndTheirMetrics) {
  const json runs = GetJson("/v1/runs");
  ASSERT_TRUE(runs.contains("runs"));
  bool found = false;
  for (const json& r : runs["runs"]) {
    EXPECT_EQ(r["id"].get<std::string>().find("evil"), std::string::npos) << runs.dump();
    if (r["id"] == "run1") {
      found = true;
      EXPECT_EQ(r["last_step"], 2);
      EXPECT_EQ(r["config"]["n_head"], 2);
    }
  }
  ASSERT_TRUE(found) << runs.dump();
  const json m = GetJson("/v1/runs/run1/metrics");
  EXPECT_EQ(m["run"], "run1");
  for (const char* c : {"step", "train_loss", "val_loss", "lr", "tokens_per_s"}) {
    ASSERT_TRUE(m["metrics"].contains(c)) << c << " " << m.dump();
  }
  const json& steps = m["metrics"]["step"];
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.back(), 2);
  EXPECT_EQ(m["metrics"]["lr"].size(), steps.size());
  bool some_loss = false;
  for (const json& v : m["metrics"]["train_loss"]) some_loss |= v.is_number();
  EXPECT_TRUE(some_loss) << m.dump();
}

TEST_F(ServeTest, Bench) {
  const json b = GetJson("/v1/bench");
  EXPECT_EQ(b["path"], "bench/1/bench.csv");
  ASSERT_EQ(b["rows"].size(), 2u) << b.dump();
  EXPECT_EQ(b["rows"][0]["Plugin"], "DeepSpeed ZeRO Stage 2, w checkpointing");
  EXPECT_DOUBLE_EQ(b["rows"][0]["Tokens per second"].get<double>(), 1234.5);
  EXPECT_EQ(b["rows"][1]["Tokens per second"], 2000);
}

TEST_F(ServeTest, BadRequestsGetJsonErrors) {
  const std::string ck = "\"checkpoint\":\"run1/checkpoints/last\",";
  const std::vector<std::string> bad = {
      "",
      "{",
      "not json",
      "[1,2]",
      "{\"prompt\":\"the\",\"steps\":NaN}",
      "{\"prompt\":\"the\",\"bogus\":1}",
      "{" + ck + "\"steps\":5}",
      "{" + ck + "\"prompt\":\"\"}",
      "{" + ck + "\"prompt\":5}",
      "{" + ck + "\"prompt\":\"the\",\"steps\":100001}",
      "{" + ck + "\"prompt\":\"the\",\"steps\":-1}",
      "{" + ck + "\"prompt\":\"the\",\"steps\":2.5}",
      "{" + ck + "\"prompt\":\"the\",\"steps\":\"5\"}",
      "{" + ck + "\"prompt\":\"the\",\"temperature\":0}",
      "{" + ck + "\"prompt\":\"the\",\"temperature\":-1}",
      "{" + ck + "\"prompt\":\"the\",\"temperature\":\"nan\"}",
      "{" + ck + "\"prompt\":\"the\",\"temperature\":1e999}",
      "{" + ck + "\"prompt\":\"the\",\"temperature\":1e-50}",
      "{" + ck + "\"prompt\":\"the\",\"top_k\":-1}",
      "{" + ck + "\"prompt\":\"the\",\"top_k\":1000}",
      "{" + ck + "\"prompt\":\"the\",\"seed\":-3}",
      "{" + ck + "\"prompt\":\"the\",\"greedy\":1}",
      "{" + ck + "\"prompt\":\"the\",\"stream\":\"yes\"}",
      "{" + ck + "\"prompt\":\"the ~ZQ\"}",
      "{" + ck + "\"prompt\":\"caf\\u00e9\"}",
      "{" + ck + "\"prompt\":\"" + std::string(10001, 'e') + "\"}",
      "{\"checkpoint\":\"../outside/leak/checkpoints/last\",\"prompt\":\"the\"}",
      "{\"checkpoint\":\"/etc\",\"prompt\":\"the\"}",
      "{\"checkpoint\":\"run1/../../outside/leak/checkpoints/last\",\"prompt\":\"the\"}",
      "{\"checkpoint\":7,\"prompt\":\"the\"}",
  };
  for (const std::string& body : bad) ExpectError(body, 400);
  // Unknown ids, and a real checkpoint reached through a symlink out of the root.
  ExpectError("{\"checkpoint\":\"nope/checkpoints/last\",\"prompt\":\"the\"}", 404);
  ExpectError("{\"checkpoint\":\"evil/checkpoints/last\",\"prompt\":\"the\"}", 404);
  // The vocabulary's size is accepted as top_k; one more is not.
  const json cfg = GetJson("/v1/checkpoints")["checkpoints"][0]["config"];
  const int vocab = cfg["vocab_size"];
  auto ok = Post(json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"}, {"steps", 3},
                      {"top_k", vocab}}.dump());
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  ExpectError(json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"}, {"top_k", vocab + 1}}.dump(), 400);
  // A body over the limit.
  ExpectError("{\"prompt\":\"" + std::string(2 << 20, 'e') + "\"}", 413);
  // Unknown paths and methods, run ids that leave the root.
  GetJson("/v1/nothing", 404);
  GetJson("/v1/runs/nope/metrics", 404);
  GetJson("/v1/runs/evil/metrics", 404);
  GetJson("/v1/runs/..%2F..%2Fetc/metrics", 400);
  GetJson("/v1/runs/%2Fetc/metrics", 400);
  GetJson("/v1/runs/run1%2F..%2F..%2Foutside%2Fleak/metrics", 400);
  // Still serving.
  GetJson("/v1/checkpoints");
}

TEST_F(ServeTest, ConcurrentRequestsAreAnsweredOrRefused) {
  constexpr int kRequests = 8;
  std::vector<int> status(kRequests, -1);
  std::vector<std::string> bodies(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([i, &status, &bodies] {
      const json body = {{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"},
                         {"steps", 400}, {"seed", i}, {"stream", i % 2 == 1}};
      auto r = Post(body.dump());
      if (r) {
        status[i] = r->status;
        bodies[i] = r->body;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  int answered = 0;
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_TRUE(status[i] == 200 || status[i] == 429) << i << ": " << status[i] << " " << bodies[i];
    if (status[i] == 200) ++answered;
    if (status[i] == 429) {
      EXPECT_TRUE(json::parse(bodies[i], nullptr, false).contains("error")) << bodies[i];
    }
  }
  EXPECT_GE(answered, 1);
  GetJson("/v1/runs");
}

// ---- the binary ----

// A port free now: bound to port 0 and closed (not listened on).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

TEST(ServeCliTest, BadFlagsFailWithOneLine) {
  TempDir tmp;
  EXPECT_TRUE(FailsWith(RunMingpt({"serve", "--root", tmp / "missing"}), 1, {"--root", "missing"}));
  EXPECT_TRUE(FailsWith(RunMingpt({"serve", "--checkpoint", tmp / "nockpt", "--root", tmp.path()}), 1,
                        {"--checkpoint", "nockpt"}));
  EXPECT_TRUE(FailsWith(RunMingpt({"serve", "--root", tmp.path(), "--port", "70000"}), 1, {"--port"}));
  RunOptions o;
  o.cwd = tmp.path();  // no runs/ here
  EXPECT_TRUE(FailsWith(RunMingpt({"serve"}, o), 1, {"nothing to serve"}));
  // A port in use (listened on, as another server would).
  const int busy = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(busy, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ASSERT_EQ(::bind(busy, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(busy, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(busy, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);
  EXPECT_TRUE(FailsWith(RunMingpt({"serve", "--root", tmp.path(), "--port", std::to_string(port)}),
                        1, {"cannot listen", std::to_string(port)}));
  ::close(busy);
}

TEST(ServeCliTest, ServesUntilCtrlC) {
  const cli_test::TrainedRun& run = SharedTrainedRun();
  ASSERT_TRUE(run.ok) << run.result.Describe();
  const int port = FreePort();
  ASSERT_GT(port, 0);
  std::atomic<bool> answered{false};
  std::thread poller;
  RunOptions o;
  o.timeout_s = 60;
  o.cwd = run.dir.path();  // no runs/ there: only --checkpoint is served
  o.on_start = [&](pid_t pid) {
    poller = std::thread([pid, port, &answered] {
      httplib::Client c("127.0.0.1", port);
      c.set_connection_timeout(2, 0);
      c.set_read_timeout(10, 0);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!answered && std::chrono::steady_clock::now() < deadline) {
        auto r = c.Post("/v1/generate", "{\"prompt\":\"the\",\"steps\":5}", "application/json");
        if (r && r->status == 200) answered = true;
        else std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      ::kill(pid, SIGINT);
    });
  };
  const ProcessResult r =
      RunMingpt({"serve", "--checkpoint", run.last, "--port", std::to_string(port)}, o);
  poller.join();
  EXPECT_TRUE(answered);
  EXPECT_TRUE(Succeeded(r)) << "Ctrl-C must stop the server cleanly";
  EXPECT_NE(r.out.find("listening on http://127.0.0.1:" + std::to_string(port)), std::string::npos)
      << r.Describe();
}

}  // namespace
}  // namespace mingpt::serve
