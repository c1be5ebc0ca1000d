// Prep: JSONL sources -> token store + stats.json, on N threads (see prep.h).
#include "data/prep.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "base/config.h"
#include "base/error.h"
#include "data/chat_template.h"
#include "data/packer.h"
#include "data/row_stream.h"
#include "data/sample_format.h"
#include "data/token_store.h"
#include "data/tokenizer.h"

namespace kiln {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// 1-based line of byte offset `pos` in `text`.
int64_t line_of(const std::string& text, size_t pos) {
  return 1 + std::count(text.begin(), text.begin() + std::min(pos, text.size()), '\n');
}

bool is_blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

// One line's outcome, filled by a worker.
struct LineResult {
  EncodedSample sample;
  int64_t loss_tokens = 0;  // mask[1:] summed: the positions whose next token is trained on
  std::string category;     // "" = kept, else the drop reason's key in stats.json
  std::string reason;
};

struct SourceJob {
  const MixtureSource* src;
  std::string format;  // resolved ("auto" is detected from the first line)
  std::unique_ptr<SampleEncoder> encoder;
  int64_t vocab = 0;  // the tokenizer's pieces: every id written is below it
};

void process_line(const std::string& line, const SourceJob& job, LineResult& r) {
  try {
    check_utf8(line);
  } catch (const SampleError& e) {
    r.category = "invalid_utf8";
    r.reason = e.what();
    return;
  }
  json j;
  try {
    j = json::parse(line);
  } catch (const json::parse_error& e) {
    r.category = "malformed_json";
    r.reason = str("malformed JSON (", e.what(), ")");
    return;
  }
  Sample s;
  try {
    s = parse_sample(j, job.format);
  } catch (const SampleError& e) {
    r.category = "bad_field";
    r.reason = e.what();
    return;
  }
  try {
    r.sample = job.encoder->encode(s);
  } catch (const SampleError& e) {
    r.category = "no_trainable_token";
    r.reason = e.what();
    return;
  }
  const auto& t = r.sample.tokens;
  for (int32_t id : t)  // templates add special ids by name; every id must be the tokenizer's
    KILN_CHECK(id >= 0 && id < job.vocab, job.src->path, ": token id ", id, " outside [0, ", job.vocab, ")");
  for (size_t k = 1; k < t.size(); ++k) r.loss_tokens += r.sample.mask[k];
}

// Worker w's share of a block: lines [w * per, (w + 1) * per).
void tokenize_lines(const std::vector<std::string>& lines, int64_t w, int64_t workers, const SourceJob& job,
                    std::vector<LineResult>& results) {
  const size_t per = (lines.size() + workers - 1) / workers;
  for (size_t i = w * per; i < std::min(lines.size(), (w + 1) * per); ++i)
    process_line(lines[i], job, results[i]);
}

// N long-lived threads that each run job(worker) once per run() call; run() waits for all.
// Long-lived so that the tokenizer's per-thread word caches survive from block to block.
class WorkerPool {
 public:
  explicit WorkerPool(int64_t n) {
    for (int64_t w = 0; w < n; ++w) threads_.emplace_back([this, w] { loop(w); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Starts job(worker) on every thread and returns; `job` must outlive the matching wait().
  void start(const std::function<void(int64_t)>& job) {
    std::unique_lock<std::mutex> lock(mu_);
    job_ = &job;
    pending_ = static_cast<int64_t>(threads_.size());
    errors_.clear();
    ++generation_;
    cv_.notify_all();
  }
  // Waits for the job start() began; rethrows the first worker's exception.
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
    if (!errors_.empty()) std::rethrow_exception(errors_.front());
  }

 private:
  void loop(int64_t w) {
    uint64_t seen = 0;
    while (true) {
      const std::function<void(int64_t)>* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      std::exception_ptr err;
      try {
        (*job)(w);
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (err) errors_.push_back(err);
      if (--pending_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_, done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int64_t pending_ = 0;
  bool stop_ = false;
  std::vector<std::exception_ptr> errors_;
};

class Progress {
 public:
  Progress(bool on, int64_t total_bytes)
      : on_(on && ::isatty(2)), total_(total_bytes), start_(std::chrono::steady_clock::now()) {}
  void update(const std::string& name, int64_t bytes, int64_t tokens) {
    if (!on_) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double frac = total_ > 0 ? double(bytes) / total_ : 1.0;
    const double eta = frac > 0 ? s / frac - s : 0;
    const int width = 30, filled = static_cast<int>(frac * width);
    std::fprintf(stderr, "\r[prep] %-16.16s [%s%s] %5.1f%% %8.0f tok/s ETA %4.0fs", name.c_str(),
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), 100 * frac,
                 s > 0 ? tokens / s : 0.0, eta);
    std::fflush(stderr);
  }
  void done() {
    if (on_) std::fprintf(stderr, "\n");
  }

 private:
  bool on_;
  int64_t total_;
  std::chrono::steady_clock::time_point start_;
};

// Reads and tokenizes one source into `writer`, returning its stats.
json prep_source(const SourceJob& job, const PrepOptions& opt, WorkerPool& pool, TokenStoreWriter& writer,
                 Progress& progress, int64_t& bytes_done, int64_t& tokens_done,
                 std::vector<int64_t>& lengths) {
  const std::string policy = resolve_overlong(opt.overlong, job.format, job.src->name);
  const MixtureSource& src = *job.src;
  std::ifstream in(src.path, std::ios::binary);
  if (!in) user_error(src.path, ": cannot open");
  json stats = {{"name", src.name}, {"path", src.path},          {"format", job.format}, {"lines", 0},
                {"samples", 0},     {"dropped", json::object()}, {"tokens", 0},          {"loss_tokens", 0}};
  int64_t lines = 0, kept = 0, tokens = 0, loss_tokens = 0, overlong = 0, split_pieces = 0;
  std::map<std::string, int64_t> dropped;
  const int64_t workers = std::max<int64_t>(1, opt.workers);
  const size_t block_lines = 2048 * static_cast<size_t>(workers);

  // A pipeline over blocks of lines: while the workers tokenize block k, this thread reads block
  // k+1 and then writes block k-1's results, so reading and writing overlap tokenizing.
  struct Block {
    std::vector<std::string> lines;
    std::vector<int64_t> line_no;
    std::vector<LineResult> results;
  };
  Block blocks[2];
  bool eof = false;
  const auto read_block = [&](Block& b) {
    b.lines.clear();
    b.line_no.clear();
    std::string line;
    while (!eof && b.lines.size() < block_lines) {
      if (!std::getline(in, line)) {
        eof = true;
        break;
      }
      ++lines;
      bytes_done += static_cast<int64_t>(line.size()) + 1;
      if (is_blank(line)) continue;
      b.lines.push_back(std::move(line));
      b.line_no.push_back(lines);
    }
    b.results.assign(b.lines.size(), LineResult{});
  };
  const auto write_block = [&](Block& b) {
    for (size_t i = 0; i < b.results.size(); ++i) {
      LineResult& r = b.results[i];
      if (!r.category.empty()) {
        if (!opt.skip_bad_lines)
          user_error(src.path, ":", b.line_no[i], ": ", r.reason,
                     " (--skip-bad-lines or data.skip_bad_lines: true skips such lines)");
        ++dropped[r.category];
        continue;
      }
      const auto& t = r.sample.tokens;
      if (t.size() < 2) {
        ++dropped["too_short"];
        continue;
      }
      ++kept;
      tokens += static_cast<int64_t>(t.size());
      loss_tokens += r.loss_tokens;
      const int64_t n = static_cast<int64_t>(t.size());
      if (opt.seq_len > 0) {
        const auto pieces = sample_pieces(0, 0, n, opt.seq_len, policy);
        if (n - 1 > opt.seq_len) {
          ++overlong;
          if (policy == "split") split_pieces += static_cast<int64_t>(pieces.size());
        }
        for (const Piece& p : pieces) lengths.push_back(p.length - 1);
      }
      writer.append(t, r.sample.mask);
      r.sample = {};  // the block's memory goes back as it is written
    }
    progress.update(src.name, bytes_done, tokens_done + tokens);
  };
  const std::function<void(int64_t)> tokenize[2] = {
      [&](int64_t w) { tokenize_lines(blocks[0].lines, w, workers, job, blocks[0].results); },
      [&](int64_t w) { tokenize_lines(blocks[1].lines, w, workers, job, blocks[1].results); }};
  Block* cur = &blocks[0];  // the block the workers tokenize
  Block* next = &blocks[1];
  bool running = false;
  // Where this thread's time goes: reading, writing, and waiting for the workers (the part of
  // tokenizing that reading and writing do not hide).
  double read_s = 0, write_s = 0, wait_s = 0;
  const auto timed = [](double& total, const auto& f) {
    const auto t = std::chrono::steady_clock::now();
    f();
    total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  try {
    timed(read_s, [&] { read_block(*cur); });
    if ((running = !cur->lines.empty())) pool.start(tokenize[cur - blocks]);
    while (running || !eof) {
      timed(read_s, [&] { read_block(*next); });
      Block* done = nullptr;
      if (running) {
        running = false;
        timed(wait_s, [&] { pool.wait(); });
        done = cur;
      }
      if ((running = !next->lines.empty())) pool.start(tokenize[next - blocks]);
      if (done) timed(write_s, [&] { write_block(*done); });
      std::swap(cur, next);
    }
  } catch (...) {
    if (running) try {
        pool.wait();  // the workers read the blocks: they finish before the blocks go
      } catch (...) {
      }
    throw;
  }
  tokens_done += tokens;
  if (lines == 0) user_error(src.path, ": empty file (no samples)");
  if (kept == 0) user_error(src.path, ": no usable samples (", lines, " lines, all blank or dropped)");
  stats["lines"] = lines;
  stats["samples"] = kept;
  for (const auto& [k, v] : dropped) stats["dropped"][k] = v;
  stats["tokens"] = tokens;
  stats["loss_tokens"] = loss_tokens;
  stats["read_seconds"] = read_s;
  stats["write_seconds"] = write_s;
  stats["tokenize_wait_seconds"] = wait_s;
  if (opt.seq_len > 0) {
    stats["overlong"] = overlong;  // samples over seq_len + 1 tokens
    stats["overlong_policy"] = policy;
    stats["split_pieces"] = split_pieces;  // the pieces those samples became (policy split)
  }
  return stats;
}

// The format of a file whose format is "auto": detected from its first non-blank line.
std::string detect_file_format(const MixtureSource& src) {
  std::ifstream in(src.path, std::ios::binary);
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (is_blank(line)) continue;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) user_error(src.path, ":", n, ": malformed JSON (cannot detect the format)");
    const std::string f = detect_format(j);
    if (f.empty())
      user_error(src.path, ":", n, ": cannot detect the format: expected the keys of text {text}, ",
                 "alpaca {instruction, output}, telechat {input, output}, firefly {conversation} ",
                 "or messages {messages}");
    return f;
  }
  user_error(src.path, ": empty file (no samples)");
}

void check_choice(const std::string& v, const std::vector<std::string>& ok, const std::string& key) {
  if (std::find(ok.begin(), ok.end(), v) != ok.end()) return;
  std::string all;
  for (const auto& o : ok) all += (all.empty() ? "" : ", ") + o;
  user_error(key, ": unknown value \"", v, "\" (expected ", all, ")");
}

}  // namespace

std::vector<MixtureSource> read_mixture(const std::string& path) {
  if (!fs::exists(path)) user_error(path, ": file not found");
  const fs::path base = fs::path(path).parent_path();
  if (fs::path(path).extension() == ".jsonl") {
    MixtureSource s;
    s.name = fs::path(path).filename().string();
    s.path = path;
    return {s};
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  if (is_blank(text)) user_error(path, ": empty file (expected {\"source.jsonl\": weight, ...})");
  nlohmann::ordered_json j;  // sources stay in the file's order
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const json::parse_error& e) {
    user_error(path, ":", line_of(text, e.byte > 0 ? e.byte - 1 : 0), ": malformed JSON (", e.what(), ")");
  }
  if (!j.is_object() || j.empty())
    user_error(path, ": expected an object {\"source.jsonl\": weight, ...}, got ", j.dump());
  std::vector<MixtureSource> out;
  double sum = 0;
  for (const auto& [name, v] : j.items()) {
    MixtureSource s;
    s.name = name;
    const std::string where =
        str(path, ":", line_of(text, text.find("\"" + name + "\"")), ": source \"", name, "\"");
    const nlohmann::ordered_json* w = &v;
    if (v.is_object()) {
      for (const auto& [k, x] : v.items()) {
        if (k == "weight") continue;
        if (k != "format" && k != "template" && k != "loss")
          user_error(where, ": unknown key \"", k, "\" (expected weight, format, template, loss)");
        if (!x.is_string()) user_error(where, ": \"", k, "\" must be a string");
      }
      if (!v.contains("weight")) user_error(where, ": missing \"weight\"");
      w = &v.at("weight");
      if (v.contains("format")) s.format = v["format"].get<std::string>();
      if (v.contains("template")) s.chat_template = v["template"].get<std::string>();
      if (v.contains("loss")) s.loss = v["loss"].get<std::string>();
    }
    if (!w->is_number())
      user_error(where, ": weight ", w->dump(), " is not a number (expected a weight >= 0)");
    s.weight = w->get<double>();
    if (!(s.weight >= 0) || !std::isfinite(s.weight))
      user_error(where, ": weight ", w->dump(), " is negative (expected a weight >= 0)");
    sum += s.weight;
    s.path = (base / name).string();
    if (!fs::is_regular_file(s.path)) user_error(where, ": file not found (", s.path, ")");
    out.push_back(std::move(s));
  }
  if (sum <= 0) user_error(path, ": the weights sum to zero (at least one source needs a weight > 0)");
  return out;
}

json run_prep(const PrepOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  if (opt.workers < 1) user_error("--workers ", opt.workers, ": must be at least 1");
  if (opt.seq_len < 0) user_error("--seq-len ", opt.seq_len, ": must be >= 0");
  if (opt.out_dir.empty()) user_error("--out: required");
  const auto sources = read_mixture(opt.data_json);
  Tokenizer tok(opt.tokenizer);
  check_choice(opt.format, {"auto", "text", "alpaca", "telechat", "firefly", "messages"}, "format");

  // Resolve every source's options before writing anything, so bad options fail fast.
  std::vector<SourceJob> jobs;
  int64_t total_bytes = 0;
  for (const auto& s : sources) {
    SourceJob job{&s, s.format.empty() ? opt.format : s.format, nullptr};
    const std::string where = str(opt.data_json, ": source \"", s.name, "\"");
    check_choice(job.format, {"auto", "text", "alpaca", "telechat", "firefly", "messages"},
                 where + " format");
    if (fs::file_size(s.path) == 0) user_error(s.path, ": empty file (no samples)");
    if (job.format == "auto") job.format = detect_file_format(s);
    const std::string tmpl = s.chat_template.empty() ? opt.chat_template : s.chat_template;
    const std::string loss = job.format == "text" ? "all_tokens" : s.loss.empty() ? opt.loss : s.loss;
    job.encoder = std::make_unique<SampleEncoder>(
        tok,
        chat_template(tmpl, opt.custom_template, s.chat_template.empty() ? "template" : where + " template"),
        loss);
    job.vocab = tok.vocab_size();
    total_bytes += static_cast<int64_t>(fs::file_size(s.path));
    jobs.push_back(std::move(job));
  }

  const fs::path out = fs::absolute(opt.out_dir);
  if (fs::exists(out) && !is_token_store(out.string()) && !dir_is_empty(out.string()))
    user_error(opt.out_dir, ": exists and is not a token store; refusing to overwrite it");
  if (out.has_parent_path()) fs::create_directories(out.parent_path());
  const fs::path tmp = out.string() + ".tmp-" + std::to_string(::getpid());
  remove_tree(tmp.string());
  fs::create_directories(tmp);
  json stats = {{"sources", json::array()}};
  try {
    Progress progress(opt.progress, total_bytes);
    int64_t bytes = 0, tokens = 0;
    std::vector<int64_t> lengths;  // [kept sample] positions, for the packing estimate
    json manifest = {{"format", "kiln-token-store"}, {"version", 1},
                     {"tokenizer", opt.tokenizer},   {"vocab_size", tok.vocab_size()},
                     {"bos_id", tok.bos_id()},       {"eos_id", tok.eos_id()},
                     {"pad_id", tok.pad_id()},       {"sources", json::array()}};
    WorkerPool pool(opt.workers);
    for (size_t k = 0; k < jobs.size(); ++k) {
      TokenStoreWriter writer(tmp.string(), "source_" + std::to_string(k));
      json st = prep_source(jobs[k], opt, pool, writer, progress, bytes, tokens, lengths);
      writer.finish();
      manifest["sources"].push_back({{"name", sources[k].name},
                                     {"weight", sources[k].weight},
                                     {"format", jobs[k].format},
                                     {"prefix", "source_" + std::to_string(k)},
                                     {"docs", writer.docs()},
                                     {"tokens", writer.tokens()},
                                     {"loss_tokens", st["loss_tokens"]}});
      stats["sources"].push_back(st);
    }
    progress.done();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    stats["tokens"] = tokens;
    stats["seconds"] = secs;
    stats["tokens_per_second"] = secs > 0 ? tokens / secs : 0.0;
    if (opt.seq_len > 0) {
      const auto bins = best_fit_pack(lengths, opt.seq_len);
      int64_t used = 0;
      for (int64_t l : lengths) used += l;
      stats["seq_len"] = opt.seq_len;
      stats["packed_rows"] = static_cast<int64_t>(bins.size());
      stats["packing_efficiency"] = bins.empty() ? 0.0 : double(used) / (double(bins.size()) * opt.seq_len);
    }
    write_file_atomic((tmp / "stats.json").string(), stats.dump(2) + "\n");
    write_file_atomic((tmp / "manifest.json").string(), manifest.dump(2) + "\n");  // last: marks completion
    const fs::path old = out.string() + ".old-" + std::to_string(::getpid());
    if (fs::exists(out)) fs::rename(out, old);
    fs::rename(tmp, out);
    remove_tree(old.string());
  } catch (...) {
    remove_tree(tmp.string());
    throw;
  }
  return stats;
}

namespace {

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

uint64_t hash_file(uint64_t h, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h = fnv1a(h, buf.data(), static_cast<size_t>(in.gcount()));
  }
  return h;
}

uint64_t hash_str(uint64_t h, const std::string& s) { return fnv1a(h, s.data(), s.size() + 1); }

// An exclusive flock on `path` for the lifetime of the object.
class FileLock {
 public:
  explicit FileLock(const std::string& path) : fd_(::open(path.c_str(), O_CREAT | O_RDWR, 0644)) {
    if (fd_ < 0) user_error(path, ": cannot create the prep lock file");
    ::flock(fd_, LOCK_EX);
  }
  ~FileLock() {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }

 private:
  int fd_;
};

}  // namespace

std::string ensure_prepared(const Config& cfg, const std::string& mixture) {
  if (fs::is_directory(mixture)) {
    if (!is_token_store(mixture))
      user_error(mixture, ": a directory but not a complete token store (run `kiln prep` into it)");
    return mixture;
  }
  if (!fs::exists(mixture)) user_error("data.mixture: ", mixture, ": file not found");
  if (cfg.tokenizer.empty())
    user_error("tokenizer: required to prepare ", mixture, " (or point data.mixture at a `kiln prep` dir)");
  const auto sources = read_mixture(mixture);
  uint64_t h = 1469598103934665603ull;
  h = hash_str(h, "store v1 + formats");  // stores prepared before formats were recorded are redone
  h = hash_file(h, mixture);
  for (const auto& s : sources) h = hash_file(hash_str(h, s.name), s.path);
  h = hash_file(h, cfg.tokenizer);
  for (const std::string& s : {cfg.data.format, cfg.data.chat_template, cfg.data.loss,
                               std::string(cfg.data.skip_bad_lines ? "skip" : "strict")})
    h = hash_str(h, s);
  for (const auto& [k, v] : cfg.data.custom_template) h = hash_str(hash_str(h, k), v);
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  const fs::path cache = fs::absolute(mixture).parent_path() / ".kiln-cache";
  const fs::path dir = cache / hex;
  if (is_token_store(dir.string())) return dir.string();
  fs::create_directories(cache);
  FileLock lock((cache / (std::string(hex) + ".lock")).string());
  if (is_token_store(dir.string())) return dir.string();  // another process prepared it meanwhile
  PrepOptions opt;
  opt.data_json = mixture;
  opt.tokenizer = cfg.tokenizer;
  opt.out_dir = dir.string();
  opt.workers = cfg.data.workers;
  opt.seq_len = cfg.data.seq_len;
  opt.overlong = cfg.data.overlong;
  opt.format = cfg.data.format;
  opt.chat_template = cfg.data.chat_template;
  opt.loss = cfg.data.loss;
  opt.custom_template = cfg.data.custom_template;
  opt.skip_bad_lines = cfg.data.skip_bad_lines;
  run_prep(opt);
  return dir.string();
}

}  // namespace kiln
