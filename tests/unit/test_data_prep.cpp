// Data tests: `kiln prep` (token store, stats, atomic output, worker independence, cache by
// content hash), every bad-input class with its one-line message, and the CLI verbs.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/chat_template.h"
#include "data/prep.h"
#include "data/sample_format.h"
#include "data/token_store.h"
#include "tests/unit/test_data_util.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "base/error.h"

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
  EXPECT_GT(stats["packing_efficiency"].get<double>(), 0.5);
  EXPECT_LE(stats["packing_efficiency"].get<double>(), 1.0);
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
