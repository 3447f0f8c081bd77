// `mingpt serve`'s HTTP API, served in-process on a free port over a runs
// directory holding a copy of the shared tiny run (tests/cli/trained_checkpoint.h),
// a bench.csv and a symlink that leads out of the root; and the binary as a
// child for its flag errors and Ctrl-C.
#include <httplib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <omp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/trained_checkpoint.h"
#include "serve/catalog.h"
#include "serve/generator.h"
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

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A raw TCP connection to 127.0.0.1:port, for requests httplib's client will
// not make (a bad Content-Length, a client that leaves, headers trickled);
// -1 when it cannot connect.
int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  for (size_t sent = 0; sent < data.size();) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// What arrives on `fd` until the peer closes, `until` appears, or timeout_s passes.
std::string Receive(int fd, double timeout_s, const std::string& until = "") {
  std::string got;
  const auto start = Clock::now();
  while (SecondsSince(start) < timeout_s && (until.empty() || got.find(until) == std::string::npos)) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

std::string PostRequest(const std::string& body) {
  return "POST /v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// A raw connection to 127.0.0.1:port that has sent `request` (the answer
// unread); -1 when it could not connect or send.
int SendRaw(int port, const std::string& request) {
  const int fd = Connect(port);
  if (fd >= 0 && !SendAll(fd, request)) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// A server of its own, for options the shared one lacks; stopped and joined
// when it goes.
class OwnServer {
 public:
  explicit OwnServer(const ServeOptions& options) {
    ServeOptions o = options;
    o.port = 0;
    auto server = Server::Create(o);
    if (!server.ok()) {
      ADD_FAILURE() << server.status().message();
      return;
    }
    server_ = std::move(server).value();
    port_ = server_->port();
    thread_ = std::thread([this] { (void)server_->Run(); });
    httplib::Client c("127.0.0.1", port_);
    for (int i = 0; i < 200; ++i) {
      if (auto r = c.Get("/v1/checkpoints"); r && r->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~OwnServer() { Stop(); }
  // Stops the server and waits for Run to return.
  void Stop() {
    if (!thread_.joinable()) return;
    server_->Stop();
    thread_.join();
  }
  bool ok() const { return server_ != nullptr; }
  int port() const { return port_; }
  std::unique_ptr<httplib::Client> Client(int timeout_s = 60) const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
    c->set_read_timeout(timeout_s, 0);
    return c;
  }

 private:
  std::unique_ptr<Server> server_;
  std::thread thread_;
  int port_ = 0;
};

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

TEST_F(ServeTest, AGoneClientCancelsItsGeneration) {
  // As many long generations as the queue takes, each from a client that
  // leaves before it ends; generating them all takes many seconds.
  ServeOptions o;
  o.root = root_;
  o.max_admitted = 8;
  OwnServer server(o);
  ASSERT_TRUE(server.ok());
  const std::string long_body =
      json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"}, {"steps", kMaxSteps}}.dump();
  std::vector<int> fds;
  for (int i = 0; i < o.max_admitted; ++i) {
    const int fd = SendRaw(server.port(), PostRequest(long_body));
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (int fd : fds) ::close(fd);
  // A new generation is admitted and answered at once.
  const auto start = Clock::now();
  int status = -1;
  while (SecondsSince(start) < 60 && status != 200) {
    auto r = server.Client()->Post(
        "/v1/generate",
        json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"}, {"steps", 5}}.dump(),
        "application/json");
    ASSERT_TRUE(r);
    status = r->status;
    if (status == 429) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(status, 200);
  EXPECT_LT(SecondsSince(start), 3.0) << "the abandoned generations ran on";
}

TEST_F(ServeTest, AFullQueueLeavesThePageAndThe429) {
  // More admitted generations than httplib's usual 16 threads, each holding
  // its connection's thread while it waits for the model.
  ServeOptions o;
  o.root = root_;
  o.max_admitted = 16;
  OwnServer server(o);
  ASSERT_TRUE(server.ok());
  const std::string body = json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"},
                                {"steps", kMaxSteps}, {"stream", true}}.dump();
  std::vector<int> fds;
  for (int i = 0; i < o.max_admitted; ++i) {
    const int fd = SendRaw(server.port(), PostRequest(body));
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
    // A stream's headers come once it is admitted.
    EXPECT_EQ(Receive(fd, 10, "\r\n\r\n").rfind("HTTP/1.1 200", 0), 0u) << i;
  }
  const auto start = Clock::now();
  auto page = server.Client(3)->Get("/");
  ASSERT_TRUE(page) << httplib::to_string(page.error());
  EXPECT_EQ(page->status, 200);
  auto refused = server.Client(3)->Post(
      "/v1/generate", json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"}}.dump(),
      "application/json");
  ASSERT_TRUE(refused) << httplib::to_string(refused.error());
  EXPECT_EQ(refused->status, 429) << refused->body;
  EXPECT_LT(SecondsSince(start), 2.0);
  for (int fd : fds) ::close(fd);
}

// The generator reads a checkpoint only from a directory its predicate (the
// server's: the root) allows, found from the open directory, and through no
// symlink: weights swapped for a link out of the root after the catalog's
// look (made so here) are refused, as is a directory the predicate refuses.
TEST_F(ServeTest, TheGeneratorReadsOnlyAllowedDirectoriesThroughNoLink) {
  const std::string root = std::filesystem::canonical(root_).string();
  const std::string outside = *tmp_ / "outside";
  const std::string good = std::filesystem::canonical(root_ + "/run1/checkpoints/last").string();
  const std::string linked = root_ + "/g1/checkpoints/last";
  std::filesystem::create_directories(root_ + "/g1/checkpoints");
  ASSERT_TRUE(Succeeded(RunProcess({CpPath(), "-rL", good, linked})));
  ASSERT_TRUE(Succeeded(RunProcess({CpPath(), good + "/model.safetensors",
                                    outside + "/g1-weights.safetensors"})));
  ASSERT_EQ(::unlink((linked + "/model.safetensors").c_str()), 0);
  ASSERT_EQ(::symlink((outside + "/g1-weights.safetensors").c_str(),
                      (linked + "/model.safetensors").c_str()), 0);
  auto request = ParseGenerateRequest(R"({"prompt": "the", "steps": 3})");
  ASSERT_TRUE(request.ok()) << request.status().message();

  Generator in_root(1, 2, [&](const std::string& real) { return real.rfind(root + "/", 0) == 0; });
  auto ticket = in_root.TryAdmit();
  ASSERT_TRUE(ticket);
  auto text = in_root.Generate(good, *request, {});
  EXPECT_TRUE(text.ok()) << text.status().message();
  auto refused = in_root.Generate(linked, *request, {});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("symlink"), std::string::npos)
      << refused.status().message();

  Generator nowhere(1, 2, [](const std::string&) { return false; });
  auto ticket2 = nowhere.TryAdmit();
  auto outside_root = nowhere.Generate(good, *request, {});
  ASSERT_FALSE(outside_root.ok());
  EXPECT_NE(outside_root.status().message().find("not under the served directory"),
            std::string::npos)
      << outside_root.status().message();
}

TEST_F(ServeTest, GenerationRunsOnOneThreadWithItsThreadCount) {
  // OpenMP's thread count is per thread: generating on whichever thread asks
  // would use every core there.
  const int threads = omp_get_max_threads() + 1;
  Generator generator(threads, 2);
  auto request = ParseGenerateRequest(R"({"prompt": "the", "steps": 5})");
  ASSERT_TRUE(request.ok()) << request.status().message();
  const std::string dir = std::filesystem::canonical(root_ + "/run1/checkpoints/last");
  std::mutex mu;
  std::set<std::thread::id> generating;
  std::set<int> counts;
  std::vector<std::thread> callers;
  for (int i = 0; i < 2; ++i) {
    callers.emplace_back([&] {
      auto ticket = generator.TryAdmit();
      ASSERT_TRUE(ticket);
      auto text = generator.Generate(dir, *request, [&](std::string_view) {
        std::lock_guard<std::mutex> lock(mu);
        generating.insert(std::this_thread::get_id());
        counts.insert(omp_get_max_threads());
        return true;
      });
      EXPECT_TRUE(text.ok()) << text.status().message();
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(generating.size(), 1u);
  EXPECT_EQ(counts, std::set<int>{threads});
}

TEST_F(ServeTest, LargeMetricsAreThinnedKeepingTheLast) {
  constexpr int kRows = 100000;
  ::mkdir((root_ + "/long").c_str(), 0755);
  std::string csv = "step,train_loss\n";
  for (int i = 0; i < kRows; ++i) csv += std::to_string(i) + "," + std::to_string(1.0 / (i + 1)) + "\n";
  WriteText(root_ + "/long/metrics.csv", csv);
  const json m = GetJson("/v1/runs/long/metrics");
  const json& steps = m["metrics"]["step"];
  ASSERT_TRUE(steps.is_array()) << m.dump().substr(0, 300);
  EXPECT_LE(steps.size(), 2001u);
  EXPECT_GT(steps.size(), 1000u);
  EXPECT_EQ(m["metrics"]["train_loss"].size(), steps.size());
  EXPECT_EQ(steps.front(), 0);
  EXPECT_EQ(steps.back(), kRows - 1);
  // Evenly spaced, but for the last.
  const int64_t stride = steps[1].get<int64_t>() - steps[0].get<int64_t>();
  for (size_t i = 1; i + 1 < steps.size(); ++i) {
    ASSERT_EQ(steps[i].get<int64_t>() - steps[i - 1].get<int64_t>(), stride) << i;
  }
  bool listed = false;
  const json runs = GetJson("/v1/runs");
  for (const json& r : runs["runs"]) {
    if (r["id"] != "long") continue;
    listed = true;
    EXPECT_EQ(r["last_step"], kRows - 1);
  }
  EXPECT_TRUE(listed);
}

TEST_F(ServeTest, LastStepSkipsNonIntegralSteps) {
  ::mkdir((root_ + "/odd").c_str(), 0755);
  WriteText(root_ + "/odd/metrics.csv", "step,train_loss\n1,2.0\n2,1.5\n1e300,1.0\n");
  bool found = false;
  const json runs = GetJson("/v1/runs");
  for (const json& r : runs["runs"]) {
    if (r["id"] != "odd") continue;
    found = true;
    EXPECT_EQ(r["last_step"], 2);
  }
  EXPECT_TRUE(found);
}

TEST_F(ServeTest, FilesSymlinkedOutOfTheRootAreNotServed) {
  const std::string outside = *tmp_ / "outside";
  const json meta = json::parse(cli_test::ReadText(root_ + "/run1/checkpoints/last/meta.json"));
  json secret = meta;
  secret["config"]["n_layer"] = 99;
  WriteText(outside + "/secret.json", secret.dump());
  ASSERT_TRUE(Succeeded(RunProcess({CpPath(), root_ + "/run1/checkpoints/last/model.safetensors",
                                    outside + "/weights.safetensors"})));
  // s1: meta.json leads out; s2: the weights do.
  for (const char* run : {"s1", "s2"}) {
    const std::string dir = root_ + "/" + run;
    ::mkdir(dir.c_str(), 0755);
    ::mkdir((dir + "/checkpoints").c_str(), 0755);
    ASSERT_TRUE(Succeeded(
        RunProcess({CpPath(), "-rL", root_ + "/run1/checkpoints/last", dir + "/checkpoints/last"})));
    ASSERT_TRUE(Succeeded(RunProcess({CpPath(), root_ + "/run1/metrics.csv", dir + "/metrics.csv"})));
  }
  ASSERT_EQ(::unlink((root_ + "/s1/checkpoints/last/meta.json").c_str()), 0);
  ASSERT_EQ(::symlink((outside + "/secret.json").c_str(),
                      (root_ + "/s1/checkpoints/last/meta.json").c_str()), 0);
  ASSERT_EQ(::unlink((root_ + "/s2/checkpoints/last/model.safetensors").c_str()), 0);
  ASSERT_EQ(::symlink((outside + "/weights.safetensors").c_str(),
                      (root_ + "/s2/checkpoints/last/model.safetensors").c_str()), 0);
  const json checkpoints = GetJson("/v1/checkpoints");
  for (const json& c : checkpoints["checkpoints"]) {
    EXPECT_NE(c["id"], "s1/checkpoints/last");
    EXPECT_NE(c["id"], "s2/checkpoints/last");
  }
  bool found = false;
  const json runs = GetJson("/v1/runs");
  for (const json& r : runs["runs"]) {
    if (r["id"] != "s1") continue;
    found = true;
    EXPECT_TRUE(r["config"].is_null()) << r.dump();
  }
  EXPECT_TRUE(found);
  ExpectError(json{{"checkpoint", "s2/checkpoints/last"}, {"prompt", "the"}, {"steps", 3}}.dump(), 404);
}

// A metrics.csv swapped for a symlink out of the root while the server
// reads it (between its check of the path and its read) is never served:
// the server checks the file it opened, not the path. A second thread swaps
// the file and the link back and forth as fast as it can.
TEST_F(ServeTest, AFileSwappedForASymlinkOutOfTheRootIsNotServed) {
  const std::string outside = *tmp_ / "outside";
  WriteText(outside + "/secret.csv", "step,secret_column\n1,42\n");
  const std::string dir = root_ + "/swap";
  ::mkdir(dir.c_str(), 0755);
  const std::string file = dir + "/metrics.csv", real = dir + "/.real", link = dir + "/.link";
  WriteText(file, "step,train_loss\n1,2.0\n");
  ASSERT_EQ(::symlink((outside + "/secret.csv").c_str(), link.c_str()), 0);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> swaps{0};
  std::thread swapper([&] {
    while (!stop.load()) {
      // The file out, the link in; then back.
      if (::rename(file.c_str(), real.c_str()) != 0 || ::rename(link.c_str(), file.c_str()) != 0 ||
          ::rename(file.c_str(), link.c_str()) != 0 || ::rename(real.c_str(), file.c_str()) != 0) {
        break;
      }
      swaps.fetch_add(1);
    }
  });
  int served = 0;
  for (int i = 0; i < 1500; ++i) {
    auto r = Client()->Get("/v1/runs/swap/metrics");
    ASSERT_TRUE(r);
    if (r->status == 200) ++served;
    ASSERT_EQ(r->body.find("secret"), std::string::npos) << "request " << i << ": " << r->body;
  }
  stop.store(true);
  swapper.join();
  EXPECT_GT(swaps.load(), 100) << "the swapping thread did not run";
  EXPECT_GT(served, 0) << "the real file was never served";
}

TEST_F(ServeTest, TheCheckpointFlagFollowsANewVersion) {
  // As training saves `best`: a new version directory, the symlink renamed
  // over, the old directory deleted.
  const std::string ckpts = *tmp_ / "flagged/checkpoints";
  ASSERT_TRUE(std::filesystem::create_directories(ckpts));
  ASSERT_TRUE(Succeeded(
      RunProcess({CpPath(), "-rL", root_ + "/run1/checkpoints/last", ckpts + "/best.ckpt-aaaaaa"})));
  ASSERT_EQ(::symlink("best.ckpt-aaaaaa", (ckpts + "/best").c_str()), 0);
  ServeOptions o;
  o.checkpoint = ckpts + "/best";
  OwnServer server(o);
  ASSERT_TRUE(server.ok());
  const std::string body = json{{"prompt", "the"}, {"steps", 5}}.dump();
  auto before = server.Client()->Post("/v1/generate", body, "application/json");
  ASSERT_TRUE(before);
  ASSERT_EQ(before->status, 200) << before->body;

  ASSERT_TRUE(Succeeded(
      RunProcess({CpPath(), "-rL", ckpts + "/best.ckpt-aaaaaa", ckpts + "/best.ckpt-bbbbbb"})));
  ASSERT_EQ(::symlink("best.ckpt-bbbbbb", (ckpts + "/best.tmp-link").c_str()), 0);
  ASSERT_EQ(::rename((ckpts + "/best.tmp-link").c_str(), (ckpts + "/best").c_str()), 0);
  std::filesystem::remove_all(ckpts + "/best.ckpt-aaaaaa");

  auto after = server.Client()->Post("/v1/generate", body, "application/json");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200) << after->body;
  EXPECT_EQ(json::parse(after->body, nullptr, false)["text"],
            json::parse(before->body, nullptr, false)["text"]);
  auto list = server.Client()->Get("/v1/checkpoints");
  ASSERT_TRUE(list);
  EXPECT_EQ(json::parse(list->body, nullptr, false)["default"], "checkpoint") << list->body;
}

TEST_F(ServeTest, RangeHeadersAreIgnored) {
  auto c = Client();
  for (const char* path : {"/", "/v1/checkpoints", "/v1/runs", "/v1/bench"}) {
    const auto whole = c->Get(path);
    ASSERT_TRUE(whole);
    for (const char* range : {"bytes=0-5", "bytes=5-", "bytes=100000000-", "bytes=0-1,4-6"}) {
      auto r = c->Get(path, {{"Range", range}});
      ASSERT_TRUE(r);
      EXPECT_EQ(r->status, 200) << path << " " << range;
      EXPECT_FALSE(r->has_header("Content-Range")) << path << " " << range;
      EXPECT_EQ(r->body, whole->body) << path << " " << range;
    }
  }
  auto stream = c->Post("/v1/generate", {{"Range", "bytes=0-10"}},
                        json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"},
                             {"steps", 5}, {"stream", true}}.dump(),
                        "application/json");
  ASSERT_TRUE(stream);
  EXPECT_EQ(stream->status, 200);
  EXPECT_EQ(ParseEvents(stream->body).back().name, "done") << stream->body;
  // One httplib cannot parse is refused before any route, as JSON.
  auto bad = c->Get("/v1/checkpoints", {{"Range", "bytes=5-1"}});
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_TRUE(json::parse(bad->body, nullptr, false).contains("error")) << bad->body;
}

TEST_F(ServeTest, AnotherMethodOnAKnownPathIs405) {
  auto c = Client();
  auto expect_405 = [](const httplib::Result& r, const std::string& allow, const std::string& what) {
    ASSERT_TRUE(r) << what;
    EXPECT_EQ(r->status, 405) << what << " " << r->body;
    EXPECT_EQ(r->get_header_value("Allow"), allow) << what;
    EXPECT_TRUE(json::parse(r->body, nullptr, false).contains("error")) << what << " " << r->body;
  };
  for (const std::string path : {"/", "/v1/checkpoints", "/v1/runs", "/v1/runs/run1/metrics", "/v1/bench"}) {
    expect_405(c->Put(path.c_str(), "{}", "application/json"), "GET, HEAD", "PUT " + path);
    expect_405(c->Delete(path.c_str()), "GET, HEAD", "DELETE " + path);
    expect_405(c->Patch(path.c_str(), "{}", "application/json"), "GET, HEAD", "PATCH " + path);
    expect_405(c->Post(path.c_str(), "{}", "application/json"), "GET, HEAD", "POST " + path);
  }
  expect_405(c->Get("/v1/generate"), "POST", "GET /v1/generate");
  expect_405(c->Put("/v1/generate", "{}", "application/json"), "POST", "PUT /v1/generate");
  GetJson("/v1/elsewhere", 404);
}

TEST_F(ServeTest, ErrorsSayWhatIsWrong) {
  // A temperature too small for a float: the message gives the range.
  auto t = Post(json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"},
                     {"temperature", 1e-300}}.dump());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->status, 400);
  EXPECT_NE(t->body.find("1.4e-45"), std::string::npos) << t->body;
  // A long run id is not said to leave the runs directory.
  const json long_id = GetJson("/v1/runs/" + std::string(8000, 'a') + "/metrics", 400);
  EXPECT_NE(long_id["error"].get<std::string>().find("longer than"), std::string::npos) << long_id;
  // A negative Content-Length is malformed, not too large.
  const int fd = SendRaw(port_, "POST /v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n"
                               "Connection: close\r\n\r\n");
  ASSERT_GE(fd, 0);
  const std::string response = Receive(fd, 10);
  ::close(fd);
  EXPECT_EQ(response.rfind("HTTP/1.1 400", 0), 0u) << response;
  EXPECT_NE(response.find("Content-Length"), std::string::npos) << response;
}

TEST_F(ServeTest, StoppingEndsConnectionsThatSendSlowly) {
  ServeOptions o;
  o.root = root_;
  OwnServer server(o);
  ASSERT_TRUE(server.ok());
  // A client that sends a header line every half second, never ending its request.
  const int fd = SendRaw(server.port(), "GET / HTTP/1.1\r\nHost: localhost\r\n");
  ASSERT_GE(fd, 0);
  std::atomic<bool> done{false};
  std::thread trickle([&] {
    const auto start = Clock::now();
    while (!done && SecondsSince(start) < 20 && SendAll(fd, "X-Slow: 1\r\n")) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto start = Clock::now();
  server.Stop();
  const double took = SecondsSince(start);
  done = true;
  trickle.join();
  ::close(fd);
  EXPECT_LT(took, 3.0);
}

// A body is taken only as sent, with its Content-Length: httplib 0.11 reads
// a chunked body, or decompresses one, whole into memory whatever its size,
// and reads a POST without a length until the client closes.
TEST_F(ServeTest, OnlyBodiesWithAContentLengthAreRead) {
  const std::string body =
      json{{"checkpoint", "run1/checkpoints/last"}, {"prompt", "the"}, {"steps", 3}}.dump();
  char size[32];
  std::snprintf(size, sizeof(size), "%zx", body.size());
  const int chunked = SendRaw(port_, "POST /v1/generate HTTP/1.1\r\nHost: localhost\r\n"
                                     "Content-Type: application/json\r\nConnection: close\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n" +
                                         std::string(size) + "\r\n" + body + "\r\n0\r\n\r\n");
  ASSERT_GE(chunked, 0);
  const std::string chunked_response = Receive(chunked, 10);
  ::close(chunked);
  EXPECT_EQ(chunked_response.rfind("HTTP/1.1 411", 0), 0u) << chunked_response;
  EXPECT_NE(chunked_response.find("Content-Length"), std::string::npos) << chunked_response;

  auto gzip_client = Client();
  gzip_client->set_compress(true);  // Content-Encoding: gzip
  auto gzipped = gzip_client->Post("/v1/generate", body, "application/json");
  ASSERT_TRUE(gzipped) << httplib::to_string(gzipped.error());
  EXPECT_EQ(gzipped->status, 415) << gzipped->body;
  EXPECT_TRUE(json::parse(gzipped->body, nullptr, false).contains("error")) << gzipped->body;

  // No length: no body, answered at once (the connection left open).
  const int unbounded = SendRaw(port_, "POST /v1/generate HTTP/1.1\r\nHost: localhost\r\n\r\n");
  ASSERT_GE(unbounded, 0);
  const std::string unbounded_response = Receive(unbounded, 3, "\r\n\r\n");
  ::close(unbounded);
  EXPECT_EQ(unbounded_response.rfind("HTTP/1.1 400", 0), 0u) << unbounded_response;
  // The same body as sent is served.
  auto plain = Post(body);
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->status, 200) << plain->body;
}

// A --checkpoint directory whose files are copied over in place (not a new
// version directory): the next generation uses the new weights, as
// `mingpt sample` does.
TEST_F(ServeTest, ACheckpointRewrittenInPlaceIsReloaded) {
  const cli_test::TrainedRun& run = SharedTrainedRun();
  const std::string other = *tmp_ / "other-seed";
  RunOptions train;
  train.cwd = run.dir.path();
  ASSERT_TRUE(
      Succeeded(RunMingpt(cli_test::TinyTrainArgs(run.data, other, {{"--seed", "5"}}), train)));
  const std::string plain = *tmp_ / "in-place";
  ASSERT_TRUE(Succeeded(RunProcess({CpPath(), "-rL", root_ + "/run1/checkpoints/last", plain})));
  ServeOptions o;
  o.checkpoint = plain;
  OwnServer server(o);
  ASSERT_TRUE(server.ok());
  const std::string body = json{{"prompt", "the"}, {"steps", 30}}.dump();
  auto before = server.Client()->Post("/v1/generate", body, "application/json");
  ASSERT_TRUE(before);
  ASSERT_EQ(before->status, 200) << before->body;

  ASSERT_TRUE(Succeeded(RunProcess({CpPath(), "-rL", other + "/checkpoints/last/.", plain})));
  auto after = server.Client()->Post("/v1/generate", body, "application/json");
  ASSERT_TRUE(after);
  ASSERT_EQ(after->status, 200) << after->body;
  const ProcessResult sample = RunMingpt({"sample", "--checkpoint", plain, "--prompt", "the",
                                          "--steps", "30", "--num_threads", "1"});
  ASSERT_TRUE(Succeeded(sample)) << sample.Describe();
  const std::string text = json::parse(after->body, nullptr, false)["text"];
  EXPECT_EQ(text + "\n", sample.out);
  EXPECT_NE(text, json::parse(before->body, nullptr, false)["text"])
      << "the weights did not change";
}

// Every run and checkpoint listed can be asked for by its id; those whose
// names no request could carry (a backslash, a control character, bytes that
// are not UTF-8) are left out, and no two runs share an id (here the root
// itself, a run named "root", and a run under it of that name).
TEST_F(ServeTest, EveryListedIdCanBeUsed) {
  const std::string root = *tmp_ / "odd-names/root";
  const std::string last = root_ + "/run1/checkpoints/last";
  std::filesystem::create_directories(root);
  WriteText(root + "/metrics.csv", "step,train_loss\n7,2.0\n");
  for (const std::string run : {"a\\b", "nl\nx", "bad\xff", "root", "good"}) {
    std::filesystem::create_directories(root + "/" + run + "/checkpoints");
    WriteText(root + "/" + run + "/metrics.csv", "step,train_loss\n1,2.0\n");
    ASSERT_TRUE(
        Succeeded(RunProcess({CpPath(), "-rL", last, root + "/" + run + "/checkpoints/best"})));
  }
  ServeOptions o;
  o.root = root;
  OwnServer server(o);
  ASSERT_TRUE(server.ok());
  auto client = server.Client();
  auto runs = client->Get("/v1/runs");
  ASSERT_TRUE(runs);
  const json run_list = json::parse(runs->body);
  std::set<std::string> ids;
  for (const json& r : run_list["runs"]) {
    const std::string id = r["id"];
    EXPECT_TRUE(ids.insert(id).second) << "two runs listed as '" << id << "': " << runs->body;
    auto m = client->Get(("/v1/runs/" + id + "/metrics").c_str());
    ASSERT_TRUE(m);
    EXPECT_EQ(m->status, 200) << id << ": " << m->body;
  }
  EXPECT_EQ(ids, (std::set<std::string>{"good", "root"})) << runs->body;
  auto root_run = client->Get("/v1/runs/root/metrics");
  ASSERT_TRUE(root_run);
  EXPECT_EQ(json::parse(root_run->body)["metrics"]["step"], json::array({7})) << root_run->body;

  auto checkpoints = client->Get("/v1/checkpoints");
  ASSERT_TRUE(checkpoints);
  const json list = json::parse(checkpoints->body);
  EXPECT_EQ(list["default"], "good/checkpoints/best") << checkpoints->body;
  std::set<std::string> checkpoint_ids;
  for (const json& c : list["checkpoints"]) {
    checkpoint_ids.insert(c["id"].get<std::string>());
    auto g = client->Post("/v1/generate", json{{"checkpoint", c["id"]}, {"prompt", "the"},
                                               {"steps", 2}}.dump(), "application/json");
    ASSERT_TRUE(g);
    EXPECT_EQ(g->status, 200) << c["id"] << ": " << g->body;
  }
  EXPECT_EQ(checkpoint_ids,
            (std::set<std::string>{"good/checkpoints/best", "root/checkpoints/best"}))
      << checkpoints->body;
}

// A metrics.csv of any size is charted (evenly spaced rows and the last),
// read as a stream: here one over 64 MiB.
TEST_F(ServeTest, AMetricsFileOfAnySizeIsCharted) {
  const std::string root = *tmp_ / "huge";
  std::filesystem::create_directories(root + "/long");
  const std::string pad(200, 'x');
  std::string csv = "step,train_loss,note\n";
  int64_t rows = 0;
  while (csv.size() <= (65u << 20)) csv += std::to_string(++rows) + ",1.5," + pad + "\n";
  WriteText(root + "/long/metrics.csv", csv);
  csv = std::string();
  ServeOptions o;
  o.root = root;
  OwnServer server(o);
  ASSERT_TRUE(server.ok());
  auto r = server.Client()->Get("/v1/runs/long/metrics");
  std::filesystem::remove_all(root);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body.substr(0, 300);
  const json steps = json::parse(r->body)["metrics"]["step"];
  EXPECT_LE(steps.size(), kMaxMetricRows + 1);
  EXPECT_GT(steps.size(), kMaxMetricRows / 2);
  EXPECT_EQ(steps.front(), 1);
  EXPECT_EQ(steps.back(), rows);
}

// The page's script, run in node (when installed) against the server with
// just enough of a DOM: a bench value capped by the batch search ("256+")
// is drawn as a bar marked capped, not as a missing one.
TEST_F(ServeTest, ThePageDrawsACappedBenchValue) {
  const std::string node = Exists("/usr/bin/node") ? "/usr/bin/node" : "";
  if (node.empty()) GTEST_SKIP() << "no /usr/bin/node to run the page's script";
  const std::string root = *tmp_ / "capped-bench";
  std::filesystem::create_directories(root + "/b");
  WriteText(root + "/b/bench.csv",
            "Plugin,Model,Max Per Device Batch Size\nDDP,gpt-nano,256+\nZeRO 3,gpt-nano,64\n");
  ServeOptions o;
  o.root = root;
  OwnServer server(o);
  ASSERT_TRUE(server.ok());
  auto page = server.Client()->Get("/");
  ASSERT_TRUE(page);
  WriteText(root + "/page.html", page->body);
  WriteText(root + "/harness.js", R"JS(
const html = require("fs").readFileSync(process.argv[2], "utf8");
const script = html.slice(html.indexOf("<script>") + 8, html.lastIndexOf("</script>"));
const elements = {};
const element = () => ({classList: {toggle() {}, contains() { return false; }}, style: {},
                        appendChild() {}, value: "", innerHTML: "", textContent: ""});
globalThis.document = {getElementById: (id) => elements[id] || (elements[id] = element()),
                       querySelectorAll: () => [], createElement: element,
                       createTextNode: element};
const serverFetch = fetch;
globalThis.fetch = (url, options) => serverFetch(process.argv[3] + url, options);
globalThis.setInterval = () => 0;
(0, eval)(script + "\nglobalThis.loadBench = loadBench;");
loadBench().then(() => console.log(elements.benchcharts.innerHTML));
)JS");
  const ProcessResult r = RunProcess({node, root + "/harness.js", root + "/page.html",
                                      "http://127.0.0.1:" + std::to_string(server.port())});
  ASSERT_TRUE(Succeeded(r)) << r.Describe();
  EXPECT_NE(r.out.find("Max Per Device Batch Size"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(">256+ (capped)</text>"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(">64</text>"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(">-</text>"), std::string::npos) << "a bar drawn as missing: " << r.out;
}

TEST_F(ServeTest, TooManyThreadsAreRefused) {
  ServeOptions o;
  o.root = root_;
  o.threads = 100000;  // as mingpt sample: at most 4 per hardware thread
  auto server = Server::Create(o);
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("--num_threads"), std::string::npos)
      << server.status().message();
}

// As `mingpt sample`: the default top_k (10) fits a smaller vocabulary, and
// only a top_k given for sampling (not greedy) is checked against it.
TEST(GenerateRequestTest, TheDefaultTopKFitsASmallVocabulary) {
  auto tokenizer = CharTokenizer::FromText("abcab");
  ASSERT_TRUE(tokenizer.ok());
  for (const char* body : {R"({"prompt": "ab"})", R"({"prompt": "ab", "top_k": 3})",
                           R"({"prompt": "ab", "top_k": 10, "greedy": true})"}) {
    auto request = ParseGenerateRequest(body);
    ASSERT_TRUE(request.ok()) << body;
    EXPECT_TRUE(CheckAgainstTokenizer(*request, *tokenizer).ok()) << body;
  }
  auto too_many = ParseGenerateRequest(R"({"prompt": "ab", "top_k": 4})");
  ASSERT_TRUE(too_many.ok());
  const Status s = CheckAgainstTokenizer(*too_many, *tokenizer);
  EXPECT_NE(s.message().find("vocabulary size (3)"), std::string::npos) << s.message();
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
  EXPECT_TRUE(FailsWith(RunMingpt({"serve", "--root", tmp.path(), "--host", ""}), 1, {"--host"}));
  EXPECT_TRUE(FailsWith(RunMingpt({"serve", "--root", tmp.path(), "--max_queue", "0"}), 1,
                        {"--max_queue"}));
  EXPECT_TRUE(FailsWith(RunMingpt({"serve", "--root", tmp.path(), "--max_queue", "100000"}), 1,
                        {"--max_queue", "256"}));
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

TEST(ServeCliTest, AnIpv6HostIsPrintedInBrackets) {
  const cli_test::TrainedRun& run = SharedTrainedRun();
  ASSERT_TRUE(run.ok) << run.result.Describe();
  // A free port on ::1, if this machine has IPv6.
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_loopback;
  socklen_t len = sizeof(addr);
  const int probe = ::socket(AF_INET6, SOCK_STREAM, 0);
  const bool bound = probe >= 0 && ::bind(probe, reinterpret_cast<sockaddr*>(&addr), len) == 0 &&
                     ::getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  if (probe >= 0) ::close(probe);
  if (!bound) GTEST_SKIP() << "no IPv6 loopback here";
  const int port = ntohs(addr.sin6_port);
  std::thread poller;
  RunOptions o;
  o.timeout_s = 60;
  o.cwd = run.dir.path();
  o.on_start = [&](pid_t pid) {
    poller = std::thread([pid, addr] {
      const auto start = Clock::now();
      while (SecondsSince(start) < 30) {
        const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
        const bool up = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
        ::close(fd);
        if (up) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      ::kill(pid, SIGINT);
    });
  };
  const ProcessResult r = RunMingpt(
      {"serve", "--checkpoint", run.last, "--host", "::1", "--port", std::to_string(port)}, o);
  poller.join();
  EXPECT_TRUE(Succeeded(r)) << r.Describe();
  EXPECT_NE(r.out.find("listening on http://[::1]:" + std::to_string(port) + "/"), std::string::npos)
      << r.Describe();
}

}  // namespace
}  // namespace mingpt::serve
