// Data tests: `kiln prep` (token store, stats, atomic output, worker independence, cache by
// content hash), every bad-input class with its one-line message, and the CLI verbs.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <set>

#include "base/error.h"
#include "data/chat_template.h"
#include "data/packer.h"
#include "data/prep.h"
#include "data/sample_format.h"
#include "data/token_store.h"
#include "tests/unit/test_data_util.h"
#include "trainer/cli.h"
#include "trainer/config.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::fixture;
using test::read_text;
using test::TempDir;
using test::tokenizer_path;
using test::write_text;

PrepOptions options(const std::string& data_json, const std::string& out) {
  PrepOptions o;
  o.data_json = data_json;
  o.tokenizer = tokenizer_path();
  o.out_dir = out;
  o.progress = false;
  return o;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

TEST(DataPrep, StoreHoldsExactlyWhatTheEncoderMakes) {
  TempDir tmp;
  PrepOptions o = options(fixture("data.json"), tmp / "store");
  o.seq_len = 64;
  const json stats = run_prep(o);
  TokenStore store(tmp / "store");
  ASSERT_EQ(store.sources().size(), 2u);
  EXPECT_EQ(store.vocab_size(), test::tokenizer().vocab_size());
  EXPECT_EQ(store.pad_id(), 3);
  const std::vector<std::string> names = {"pretrain.jsonl", "sft_firefly.jsonl"};
  const std::vector<std::string> formats = {"text", "firefly"};
  const std::vector<double> weights = {2.0, 1.0};
  int64_t all_tokens = 0;
  for (size_t s = 0; s < 2; ++s) {
    const StoreSource& src = store.sources()[s];
    EXPECT_EQ(src.name, names[s]);
    EXPECT_EQ(src.weight, weights[s]);
    const auto lines = lines_of(fixture(names[s]));
    ASSERT_EQ(src.docs, static_cast<int64_t>(lines.size()));
    SampleEncoder enc(test::tokenizer(), chat_template("firefly", {}), s == 0 ? "all_tokens" : "all_turns");
    int64_t tokens = 0, loss = 0;
    for (int64_t d = 0; d < src.docs; ++d) {
      const EncodedSample e = enc.encode(parse_sample(json::parse(lines[d]), formats[s]));
      ASSERT_EQ(src.doc_length(d), static_cast<int64_t>(e.tokens.size()));
      EXPECT_EQ(std::vector<int32_t>(src.doc_tokens(d), src.doc_tokens(d) + src.doc_length(d)), e.tokens);
      EXPECT_EQ(std::vector<uint8_t>(src.doc_mask(d), src.doc_mask(d) + src.doc_length(d)), e.mask);
      tokens += e.tokens.size();
      for (size_t k = 1; k < e.mask.size(); ++k) loss += e.mask[k];
    }
    const json& st = stats["sources"][s];
    EXPECT_EQ(st["name"], names[s]);
    EXPECT_EQ(st["format"], formats[s]);
    EXPECT_EQ(st["lines"], lines.size());
    EXPECT_EQ(st["samples"], lines.size());
    EXPECT_EQ(st["tokens"], tokens);
    EXPECT_EQ(st["loss_tokens"], loss);
    EXPECT_EQ(st["dropped"], json::object());
    EXPECT_EQ(src.tokens, tokens);
    all_tokens += tokens;
  }
  EXPECT_EQ(stats["tokens"], all_tokens);
  // Packing at seq_len 64, by hand: a sample of n tokens is n - 1 positions; an over-long one
  // (n - 1 > 64) is split into ceil((n - 1) / 64) pieces when it is text (positions kept) and
  // truncated to 64 positions when it is SFT. The rows are best-fit bins of those lengths.
  std::vector<int64_t> lengths;
  int64_t used = 0;
  for (size_t s = 0; s < 2; ++s) {
    const StoreSource& src = store.sources()[s];
    int64_t overlong = 0, pieces = 0;
    for (int64_t d = 0; d < src.docs; ++d) {
      const int64_t positions = src.doc_length(d) - 1;
      if (positions <= 64) {
        lengths.push_back(positions);
        continue;
      }
      ++overlong;
      if (s == 1) {
        lengths.push_back(64);
        continue;
      }
      for (int64_t left = positions; left > 0; left -= 64, ++pieces)
        lengths.push_back(std::min<int64_t>(left, 64));
    }
    EXPECT_EQ(stats["sources"][s]["overlong"], overlong) << s;
    EXPECT_EQ(stats["sources"][s]["overlong_policy"], s == 0 ? "split" : "truncate");
    EXPECT_EQ(stats["sources"][s]["split_pieces"], s == 0 ? pieces : 0) << s;
  }
  for (int64_t l : lengths) used += l;
  const int64_t rows = static_cast<int64_t>(best_fit_pack(lengths, 64).size());
  EXPECT_EQ(stats["packed_rows"], rows);
  EXPECT_EQ(stats["packing_efficiency"].get<double>(), double(used) / (double(rows) * 64));
  EXPECT_GE(rows, (used + 63) / 64);  // no row over 64 positions
  EXPECT_EQ(json::parse(read_text(tmp / "store/stats.json")), stats);
}

TEST(DataPrep, OutputDoesNotDependOnWorkerCount) {
  TempDir tmp;
  PrepOptions one = options(fixture("data.json"), tmp / "one");
  one.workers = 1;
  PrepOptions three = options(fixture("data.json"), tmp / "three");
  three.workers = 3;
  run_prep(one);
  run_prep(three);
  for (const char* f : {"source_0.tokens", "source_0.mask", "source_0.index", "source_1.tokens",
                        "source_1.mask", "source_1.index"})
    EXPECT_EQ(read_text(tmp / (std::string("one/") + f)), read_text(tmp / (std::string("three/") + f))) << f;
}

// Workers take blocks of 2048 * workers non-blank lines: 5000 lines are 3 blocks for one worker
// and 2 for two. Blank and bad lines sit at the same index of consecutive blocks (a result left
// over from the previous block would drop a good line), and around the boundaries; the store
// holds exactly the encoding of every good line in order, and an error names its true line.
TEST(DataPrep, WorkersAcrossBlockBoundaries) {
  TempDir tmp;
  const std::set<int> blank = {3, 2047, 4100}, bad = {5, 2048, 2049, 2054, 4103, 4998};  // 1-based lines
  std::string text;
  std::vector<std::string> good;
  for (int i = 1; i <= 5000; ++i) {
    std::string line;
    if (blank.count(i)) {
      line = "";
    } else if (bad.count(i)) {
      line = "{\"text\": \"broken " + std::to_string(i) + "\"";
    } else {
      line =
          json({{"text", "line " + std::to_string(i) + (i % 3 ? " the quick fox" : " hello world")}}).dump();
      good.push_back(line);
    }
    text += line + "\n";
  }
  write_text(tmp / "big.jsonl", text);
  SampleEncoder enc(test::tokenizer(), chat_template("firefly", {}), "all_tokens");
  for (int64_t workers : {1, 2}) {
    const std::string out = tmp / ("store-" + std::to_string(workers));
    PrepOptions o = options(tmp / "big.jsonl", out);
    o.workers = workers;
    o.skip_bad_lines = true;
    const json stats = run_prep(o);
    EXPECT_EQ(stats["sources"][0]["lines"], 5000);
    EXPECT_EQ(stats["sources"][0]["samples"], good.size());
    EXPECT_EQ(stats["sources"][0]["dropped"], json({{"malformed_json", bad.size()}}));
    TokenStore store(out);
    const StoreSource& src = store.sources()[0];
    ASSERT_EQ(src.docs, static_cast<int64_t>(good.size())) << workers;
    for (int64_t d = 0; d < src.docs; ++d) {
      const EncodedSample e = enc.encode(parse_sample(json::parse(good[d]), "text"));
      ASSERT_EQ(std::vector<int32_t>(src.doc_tokens(d), src.doc_tokens(d) + src.doc_length(d)), e.tokens)
          << "workers " << workers << " doc " << d;
    }
  }
  // Without skipping, a bad line past two boundaries (one worker) is named by its own line.
  std::string late;
  for (int i = 1; i <= 4500; ++i)
    late += i == 4103 ? "{\"text\": \"broken\"\n"
            : i == 50 ? "\n"
                      : json({{"text", "w " + std::to_string(i)}}).dump() + "\n";
  write_text(tmp / "late.jsonl", late);
  for (int64_t workers : {1, 2}) {
    PrepOptions o = options(tmp / "late.jsonl", tmp / "late-store");
    o.workers = workers;
    try {
      run_prep(o);
      FAIL() << "no error";
    } catch (const UserError& e) {
      EXPECT_EQ(std::string(e.what()).substr(0, (tmp / "late.jsonl").size() + 6),
                tmp / "late.jsonl" + ":4103:")
          << e.what();
    }
  }
}

TEST(DataPrep, SkipBadLinesCountsEveryReason) {
  TempDir tmp;
  write_text(tmp / "mixed.jsonl",
             "{\"conversation\":[{\"human\":\"q one\",\"assistant\":\"a one\"}]}\n"
             "{\"conversation\":[{\"human\":\"q one\",\"assistant\":\"a one\"}\n"     // malformed
             "{\"conversation\":[{\"human\":\"q \xff\",\"assistant\":\"a one\"}]}\n"  // bad UTF-8
             "{\"conversation\":[{\"human\":\"q one\"}]}\n"                           // missing field
             "{\"conversation\":[{\"human\":\"q one\",\"assistant\":\"\"}]}\n"        // nothing to train
             "\n"
             "{\"conversation\":[{\"human\":\"q two\",\"assistant\":\"a two\"}]}\n");
  PrepOptions o = options(tmp / "mixed.jsonl", tmp / "store");
  o.skip_bad_lines = true;
  const json stats = run_prep(o);
  const json& st = stats["sources"][0];
  EXPECT_EQ(st["lines"], 7);
  EXPECT_EQ(st["samples"], 2);
  EXPECT_EQ(st["dropped"],
            json({{"bad_field", 1}, {"invalid_utf8", 1}, {"malformed_json", 1}, {"no_trainable_token", 1}}));
  EXPECT_EQ(TokenStore(tmp / "store").sources()[0].docs, 2);
}

TEST(DataPrep, FailedPrepLeavesNoStoreAndKeepsTheOldOne) {
  TempDir tmp;
  write_text(tmp / "good.jsonl", "{\"text\":\"hello world\"}\n");
  write_text(tmp / "bad.jsonl", "{\"text\":\"hello world\"}\n{\"text\":\"the sea\"\n");
  run_prep(options(tmp / "good.jsonl", tmp / "store"));
  const std::string before = read_text(tmp / "store/source_0.tokens");
  EXPECT_THROW(run_prep(options(tmp / "bad.jsonl", tmp / "store")), UserError);
  EXPECT_THROW(run_prep(options(tmp / "bad.jsonl", tmp / "fresh")), UserError);
  EXPECT_FALSE(fs::exists(tmp / "fresh"));
  for (const char* leftover : {"fresh.tmp-", "store.tmp-"})
    EXPECT_FALSE(fs::exists(tmp / (leftover + std::to_string(::getpid())))) << leftover;
  EXPECT_EQ(read_text(tmp / "store/source_0.tokens"), before);  // the complete store is untouched
  EXPECT_TRUE(is_token_store(tmp / "store"));
  // A directory without manifest.json (an interrupted copy, say) is not a store.
  fs::create_directories(tmp / "partial");
  write_text(tmp / "partial/source_0.tokens", "xxxx");
  EXPECT_FALSE(is_token_store(tmp / "partial"));
  try {
    TokenStore s(tmp / "partial");
    FAIL();
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()),
              tmp / "partial" + ": no manifest.json: not a complete token store (rerun `kiln prep`)");
  }
}

TEST(DataPrep, EnsurePreparedCachesByContentHash) {
  TempDir tmp;
  write_text(tmp / "a.jsonl", read_text(fixture("pretrain.jsonl")));
  write_text(tmp / "data.json", "{\"a.jsonl\": 1.0}");
  Config cfg;
  cfg.tokenizer = tokenizer_path();
  const std::string dir = ensure_prepared(cfg, tmp / "data.json");
  EXPECT_EQ(fs::path(dir).parent_path(), fs::path(tmp / ".kiln-cache"));
  EXPECT_TRUE(is_token_store(dir));
  const auto stamp = fs::last_write_time(fs::path(dir) / "manifest.json");
  EXPECT_EQ(ensure_prepared(cfg, tmp / "data.json"), dir);  // reused, not rebuilt
  EXPECT_EQ(fs::last_write_time(fs::path(dir) / "manifest.json"), stamp);
  EXPECT_EQ(ensure_prepared(cfg, dir), dir);  // a prepared dir is taken as is
  cfg.data.loss = "last_turn";
  const std::string other = ensure_prepared(cfg, tmp / "data.json");
  EXPECT_NE(other, dir);
  cfg.data.loss = "all_turns";
  write_text(tmp / "a.jsonl", read_text(fixture("pretrain.jsonl")) + "{\"text\":\"one more\"}\n");
  const std::string changed = ensure_prepared(cfg, tmp / "data.json");
  EXPECT_NE(changed, dir);
  EXPECT_EQ(TokenStore(changed).sources()[0].docs, 41);
}

// The cache key is the content of everything that shapes the store: change the tokenizer, the
// data.json, the format or the template and the mixture is prepared again into another
// directory; the same content (the tokenizer copied elsewhere, data.json put back) is a hit.
TEST(DataPrep, CacheKeyCoversTokenizerDataJsonFormatAndTemplate) {
  TempDir tmp;
  write_text(tmp / "a.jsonl", read_text(fixture("pretrain.jsonl")));
  write_text(tmp / "s.jsonl", read_text(fixture("sft_firefly.jsonl")));
  write_text(tmp / "data.json", "{\"a.jsonl\": 1.0, \"s.jsonl\": 1.0}");
  Config cfg;
  cfg.tokenizer = tokenizer_path();
  const std::string base = ensure_prepared(cfg, tmp / "data.json");
  const auto stamp = fs::last_write_time(fs::path(base) / "manifest.json");
  auto hit = [&](const Config& c, const std::string& mixture) {
    EXPECT_EQ(ensure_prepared(c, mixture), base);
    EXPECT_EQ(fs::last_write_time(fs::path(base) / "manifest.json"), stamp);  // not rebuilt
  };
  std::set<std::string> dirs = {base};
  auto miss = [&](const Config& c, const std::string& mixture, const std::string& what) {
    const std::string dir = ensure_prepared(c, mixture);
    EXPECT_TRUE(dirs.insert(dir).second) << what << ": " << dir << " reused";
    EXPECT_TRUE(is_token_store(dir)) << what;
    return dir;
  };
  // The tokenizer: by content, not path.
  fs::copy_file(tokenizer_path(), tmp / "same.model");
  Config copied = cfg;
  copied.tokenizer = tmp / "same.model";
  hit(copied, tmp / "data.json");
  TokenizerTrainOptions t;
  t.out_prefix = tmp / "other";
  t.vocab_size = 500;
  t.character_coverage = 1.0;
  t.threads = 1;
  std::vector<std::string> corpus;
  std::ifstream in(fixture("tokenizer_corpus.txt"));
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) corpus.push_back(l);
  train_tokenizer(corpus, t);
  Config other_tok = cfg;
  other_tok.tokenizer = t.out_prefix + ".model";
  EXPECT_EQ(TokenStore(miss(other_tok, tmp / "data.json", "tokenizer")).vocab_size(), 500);
  // data.json: a weight changed, then put back.
  write_text(tmp / "data.json", "{\"a.jsonl\": 2.0, \"s.jsonl\": 1.0}");
  EXPECT_EQ(TokenStore(miss(cfg, tmp / "data.json", "data.json")).sources()[0].weight, 2.0);
  write_text(tmp / "data.json", "{\"a.jsonl\": 1.0, \"s.jsonl\": 1.0}");
  hit(cfg, tmp / "data.json");
  // data.format (auto detects firefly for s.jsonl: the same tokens, but another key).
  Config fmt = cfg;
  const std::string sft_auto = miss(cfg, tmp / "s.jsonl", "s.jsonl");
  fmt.data.format = "firefly";
  miss(fmt, tmp / "s.jsonl", "format");
  EXPECT_EQ(ensure_prepared(cfg, tmp / "s.jsonl"), sft_auto);
  // The template, and a custom template's strings.
  Config tmpl = cfg;
  tmpl.data.chat_template = "chatml";
  const std::string chatml = miss(tmpl, tmp / "data.json", "template");
  EXPECT_NE(read_text(chatml + "/source_1.tokens"), read_text(base + "/source_1.tokens"));
  EXPECT_EQ(read_text(chatml + "/source_0.tokens"),
            read_text(base + "/source_0.tokens"));  // text: no template
  Config custom = cfg;
  custom.data.chat_template = "custom";
  custom.data.custom_template = {{"user", "Q: {content}\n"}, {"assistant", "A: {content}</s>"}};
  miss(custom, tmp / "data.json", "custom template");
  custom.data.custom_template["user"] = "Question: {content}\n";
  miss(custom, tmp / "data.json", "custom template string");
  hit(cfg, tmp / "data.json");
}

// Two preps of one mixture at once: the second waits on the lock file and then takes the store
// the first made instead of preparing it again.
TEST(DataPrep, ConcurrentPrepWaitsOnTheLockAndReusesTheStore) {
  TempDir a, b;
  for (const TempDir* d : {&a, &b}) {
    write_text(*d / "a.jsonl", read_text(fixture("pretrain.jsonl")));
    write_text(*d / "data.json", "{\"a.jsonl\": 1.0}");
  }
  Config cfg;
  cfg.tokenizer = tokenizer_path();
  const std::string key = fs::path(ensure_prepared(cfg, a / "data.json")).filename().string();
  const fs::path cache = fs::path(b.str()) / ".kiln-cache";
  fs::create_directories(cache);
  const int fd = ::open((cache / (key + ".lock")).c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);  // another prep holds the lock
  auto waiter = std::async(std::launch::async, [&] { return ensure_prepared(cfg, b / "data.json"); });
  EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(700)), std::future_status::timeout) << "did not wait";
  EXPECT_FALSE(fs::exists(cache / key));
  // The holder finishes its store (renamed in whole), with a mark a second prep would not keep.
  fs::copy(ensure_prepared(cfg, a / "data.json"), cache / "incoming", fs::copy_options::recursive);
  write_text((cache / "incoming" / "made-by-the-holder").string(), "");
  fs::rename(cache / "incoming", cache / key);
  ::flock(fd, LOCK_UN);
  ::close(fd);
  EXPECT_EQ(waiter.get(), (cache / key).string());
  EXPECT_TRUE(fs::exists(cache / key / "made-by-the-holder"));
}

// --- bad input: one line naming the file (and line) and the problem -------------------------

std::string prep_error(const TempDir& tmp, const std::string& input, const std::string& format = "auto",
                       const std::string& tmpl = "firefly") {
  PrepOptions o = options(tmp / input, tmp / "out");
  o.format = format;
  o.chat_template = tmpl;
  try {
    run_prep(o);
  } catch (const UserError& e) {
    return e.what();
  }
  return "no error";
}

TEST(DataBadInput, EveryClassNamesTheFileAndLine) {
  TempDir tmp;
  const std::string good = "{\"text\":\"hello world\"}\n";
  const std::string skip = " (--skip-bad-lines or data.skip_bad_lines: true skips such lines)";
  write_text(tmp / "malformed.jsonl", good + "{\"text\": \"hello\"\n");
  EXPECT_EQ(prep_error(tmp, "malformed.jsonl"),
            tmp / "malformed.jsonl" +
                ":2: malformed JSON ([json.exception.parse_error.101] parse error at line 1, "
                "column 17: syntax error while parsing object - unexpected end of input; "
                "expected '}')" +
                skip);
  write_text(tmp / "missing.jsonl", good + good + "{\"txt\":\"hello\"}\n");
  EXPECT_EQ(prep_error(tmp, "missing.jsonl"),
            tmp / "missing.jsonl" + ":3: missing field \"text\" (format text)" + skip);
  write_text(tmp / "mistyped.jsonl", "{\"instruction\":\"x\",\"output\":[\"y\"]}\n");
  EXPECT_EQ(prep_error(tmp, "mistyped.jsonl"),
            tmp / "mistyped.jsonl" + ":1: field \"output\" must be a string, got array" + skip);
  write_text(tmp / "utf8.jsonl", good + "{\"text\":\"caf\xe9\"}\n");
  EXPECT_EQ(prep_error(tmp, "utf8.jsonl"), tmp / "utf8.jsonl" + ":2: invalid UTF-8 at byte 13" + skip);
  write_text(tmp / "empty.jsonl", "");
  EXPECT_EQ(prep_error(tmp, "empty.jsonl"), tmp / "empty.jsonl" + ": empty file (no samples)");
  write_text(tmp / "blank.jsonl", "\n\n");
  EXPECT_EQ(prep_error(tmp, "blank.jsonl"), tmp / "blank.jsonl" + ": empty file (no samples)");
  EXPECT_EQ(prep_error(tmp, "absent.jsonl"), tmp / "absent.jsonl" + ": file not found");
  write_text(tmp / "notrain.jsonl", "{\"conversation\":[{\"human\":\"q\",\"assistant\":\"\"}]}\n");
  EXPECT_EQ(prep_error(tmp, "notrain.jsonl"),
            tmp / "notrain.jsonl" + ":1: no trainable token: every trained assistant answer is empty" + skip);
  write_text(tmp / "unknown.jsonl", "{\"prompt\":\"x\",\"completion\":\"y\"}\n");
  EXPECT_EQ(prep_error(tmp, "unknown.jsonl"),
            tmp / "unknown.jsonl" +
                ":1: cannot detect the format: expected the keys of text {text}, alpaca "
                "{instruction, output}, telechat {input, output}, firefly {conversation} or "
                "messages {messages}");
  write_text(tmp / "ok.jsonl", good);
  EXPECT_EQ(prep_error(tmp, "ok.jsonl", "sharegpt"),
            "format: unknown value \"sharegpt\" (expected auto, text, alpaca, telechat, firefly, messages)");
  write_text(tmp / "sft.jsonl", "{\"instruction\":\"x\",\"output\":\"y\"}\n");
  EXPECT_EQ(prep_error(tmp, "sft.jsonl", "auto", "vicuna"),
            "template: unknown template \"vicuna\" (expected firefly, xuanyuan, llama2, chatml, telechat or "
            "custom)");
}

TEST(DataBadInput, DataJsonWeightsAndSources) {
  TempDir tmp;
  write_text(tmp / "a.jsonl", "{\"text\":\"hello world\"}\n");
  write_text(tmp / "b.jsonl", "{\"text\":\"the sea\"}\n");
  auto err = [&](const std::string& data_json) {
    write_text(tmp / "data.json", data_json);
    return prep_error(tmp, "data.json");
  };
  const std::string dj = tmp / "data.json";
  EXPECT_EQ(err("{\n\"a.jsonl\": -1.0,\n\"b.jsonl\": 1}"),
            dj + ":2: source \"a.jsonl\": weight -1.0 is negative (expected a weight >= 0)");
  EXPECT_EQ(err("{\"a.jsonl\": 0, \"b.jsonl\": 0.0}"),
            dj + ": the weights sum to zero (at least one source needs a weight > 0)");
  EXPECT_EQ(err("{\"a.jsonl\": 1,\n \"b.jsonl\": \"two\"}"),
            dj + ":2: source \"b.jsonl\": weight \"two\" is not a number (expected a weight >= 0)");
  EXPECT_EQ(err("{\"a.jsonl\": 1,\n \"c.jsonl\": 1}"),
            dj + ":2: source \"c.jsonl\": file not found (" + tmp / "c.jsonl" + ")");
  EXPECT_EQ(
      err("{\"a.jsonl\": 1,\n\n \"b.jsonl\" 1}"),
      dj + ":3: malformed JSON ([json.exception.parse_error.101] parse error at line 3, column 12: syntax "
           "error while parsing object separator - unexpected number literal; expected ':')");
  EXPECT_EQ(err(""), dj + ": empty file (expected {\"source.jsonl\": weight, ...})");
  EXPECT_EQ(err("[\"a.jsonl\"]"),
            dj + ": expected an object {\"source.jsonl\": weight, ...}, got [\"a.jsonl\"]");
  EXPECT_EQ(err("{\"a.jsonl\": {\"weight\": 1, \"fmt\": \"text\"}}"),
            dj + ":1: source \"a.jsonl\": unknown key \"fmt\" (expected weight, format, template, loss)");
  EXPECT_EQ(err("{\"a.jsonl\": {\"weight\": 1, \"format\": \"csv\"}}"),
            dj + ": source \"a.jsonl\" format: unknown value \"csv\" (expected auto, text, alpaca, telechat, "
                 "firefly, messages)");
}

// --- CLI ------------------------------------------------------------------------------------

int run_cli(int (*cmd)(int, char**), std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return cmd(static_cast<int>(argv.size()), argv.data());
}

TEST(DataCli, TokenizerTrainThenPrep) {
  TempDir tmp;
  const std::string inputs = fixture("pretrain.jsonl") + "," + fixture("sft_firefly.jsonl");
  ASSERT_EQ(run_cli(cmd_tokenizer, {"kiln", "tokenizer", "train", "--input", inputs, "--out", tmp / "tok",
                                    "--vocab-size", "320"}),
            0);
  Tokenizer tok(tmp / "tok.model");
  EXPECT_EQ(tok.vocab_size(), 320);
  for (const auto& p : chat_special_pieces()) EXPECT_GE(tok.piece_id(p), 0) << p;
  EXPECT_EQ(tok.decode(tok.encode("the quick brown fox")), "the quick brown fox");
  ASSERT_EQ(run_cli(cmd_prep, {"kiln", "prep", fixture("data.json"), "--tokenizer", tmp / "tok.model",
                               "--out", tmp / "store", "--workers", "2", "--seq-len", "64", "--no-progress"}),
            0);
  EXPECT_EQ(TokenStore(tmp / "store").sources().size(), 2u);
  EXPECT_EQ(json::parse(read_text(tmp / "store/stats.json"))["seq_len"], 64);
  EXPECT_THROW(run_cli(cmd_prep, {"kiln", "prep", fixture("data.json"), "--tokenizer", tmp / "tok.model"}),
               UserError);
  EXPECT_THROW(run_cli(cmd_prep, {"kiln", "prep", fixture("data.json"), "--tokenizer", tmp / "tok.model",
                                  "--out", tmp / "x", "--workers", "two"}),
               UserError);
  EXPECT_THROW(run_cli(cmd_tokenizer, {"kiln", "tokenizer", "fit"}), UserError);
}

}  // namespace
}  // namespace kiln
