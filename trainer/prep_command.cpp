// `kiln prep` and `kiln tokenizer train`: the command-line side of prep.h and tokenizer.h.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/mixer.h"
#include "data/prep.h"
#include "data/sample_format.h"
#include "data/tokenizer.h"
#include "data/tokenizer_extend.h"
#include "base/file_io.h"
#include "trainer/cli.h"
#include "base/error.h"

namespace kiln {

namespace {

// Every string of a JSONL line worth learning a vocabulary from.
void collect_text(const nlohmann::json& j, std::vector<std::string>& out) {
  if (j.is_string()) {
    const std::string& s = j.get_ref<const std::string&>();
    size_t start = 0;
    while (start < s.size()) {  // one sentence per line keeps them under sentencepiece's limit
      size_t nl = s.find('\n', start);
      if (nl == std::string::npos) nl = s.size();
      if (nl > start) out.push_back(s.substr(start, nl - start));
      start = nl + 1;
    }
  } else if (j.is_array() || j.is_object()) {
    for (const auto& v : j) collect_text(v, out);
  }
}

}  // namespace

int cmd_prep(int argc, char** argv) {
  const Args o = parse_args(
      argc, argv, 2, {"tokenizer", "out", "workers", "seq-len", "overlong", "format", "template", "loss"},
      {"skip-bad-lines", "no-progress"});
  if (o.help) {
    std::fprintf(stderr,
                 "usage: kiln prep DATA_JSON --tokenizer MODEL --out DIR [--workers N] [--seq-len L]\n"
                 "                 [--overlong auto|split|truncate|drop]\n"
                 "                 [--format auto|text|alpaca|telechat|firefly|messages]\n"
                 "                 [--template firefly|xuanyuan|llama2|chatml|telechat] [--loss "
                 "all_turns|last_turn|all_tokens]\n"
                 "                 [--skip-bad-lines] [--no-progress]\n");
    return 0;
  }
  if (o.positional.size() != 1) user_error("prep: expected one DATA_JSON (a data.json or a .jsonl file)");
  PrepOptions opt;
  opt.data_json = o.positional[0];
  opt.tokenizer = o.get("tokenizer");
  opt.out_dir = o.get("out");
  if (opt.tokenizer.empty()) user_error("prep: --tokenizer MODEL is required");
  if (opt.out_dir.empty()) user_error("prep: --out DIR is required");
  opt.workers = o.get_int("workers", 2);
  opt.seq_len = o.get_int("seq-len", 0);
  opt.overlong = o.get("overlong", "auto");
  opt.format = o.get("format", "auto");
  opt.chat_template = o.get("template", "firefly");
  opt.loss = o.get("loss", "all_turns");
  opt.skip_bad_lines = o.has("skip-bad-lines");
  opt.progress = !o.has("no-progress");
  const nlohmann::json stats = run_prep(opt);
  for (const auto& s : stats["sources"]) {
    std::string drops;
    for (const auto& [k, v] : s["dropped"].items()) drops += str(" ", k, "=", v.get<int64_t>());
    std::fprintf(stderr, "[prep] %s: %lld lines, %lld samples, %lld tokens, %lld loss tokens%s%s\n",
                 s["name"].get<std::string>().c_str(), (long long)s["lines"].get<int64_t>(),
                 (long long)s["samples"].get<int64_t>(), (long long)s["tokens"].get<int64_t>(),
                 (long long)s["loss_tokens"].get<int64_t>(),
                 drops.empty() ? "" : ", dropped:", drops.c_str());
  }
  std::fprintf(stderr, "[prep] %lld tokens in %.2f s (%.0f tokens/s)",
               (long long)stats["tokens"].get<int64_t>(), stats["seconds"].get<double>(),
               stats["tokens_per_second"].get<double>());
  if (stats.contains("packing_efficiency"))
    std::fprintf(stderr, ", packing efficiency %.4f at seq_len %lld",
                 stats["packing_efficiency"].get<double>(), (long long)stats["seq_len"].get<int64_t>());
  std::fprintf(stderr, "\n[prep] wrote %s (stats.json)\n", opt.out_dir.c_str());
  return 0;
}

namespace {

// The text of FILE[,FILE...]: one sentence per non-blank line of a text file, the text fields of
// each line of a .jsonl file.
std::vector<std::string> read_sentences(const std::string& inputs) {
  std::vector<std::string> sentences;
  size_t start = 0;
  while (start <= inputs.size()) {
    size_t comma = inputs.find(',', start);
    if (comma == std::string::npos) comma = inputs.size();
    const std::string path = inputs.substr(start, comma - start);
    start = comma + 1;
    if (path.empty()) continue;
    std::ifstream in(path, std::ios::binary);
    if (!in) user_error(path, ": cannot open");
    const bool jsonl = path.size() > 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      try {
        check_utf8(line);
      } catch (const SampleError& e) {
        user_error(path, ":", n, ": ", e.what());
      }
      if (!jsonl) {
        sentences.push_back(line);
        continue;
      }
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded()) user_error(path, ":", n, ": malformed JSON");
      collect_text(j, sentences);
    }
  }
  return sentences;
}

// At most `cap` of `sentences`, drawn with a fixed seed.
void sample_sentences(std::vector<std::string>& sentences, size_t cap) {
  if (sentences.size() <= cap) return;
  std::vector<int64_t> idx(sentences.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i);
  auto rng = make_rng(1234, 0, 0);
  shuffle(idx, rng);
  std::vector<std::string> kept;
  for (size_t i = 0; i < cap; ++i) kept.push_back(std::move(sentences[idx[i]]));
  sentences = std::move(kept);
}

double parse_coverage(const std::string& coverage) {
  char* end = nullptr;
  const double c = std::strtod(coverage.c_str(), &end);
  if (coverage.empty() || *end != '\0' || !(c > 0 && c <= 1))
    user_error("--character-coverage: expected a number in (0, 1], got '", coverage, "'");
  return c;
}

// Tokens per character (UTF-8 code points) of `tok` over `sample`.
double tokens_per_char(const Tokenizer& tok, const std::vector<std::string>& sample) {
  int64_t tokens = 0, chars = 0;
  for (const std::string& s : sample) {
    tokens += static_cast<int64_t>(tok.encode(s).size());
    for (unsigned char c : s) chars += (c & 0xC0) != 0x80;
  }
  return chars > 0 ? static_cast<double>(tokens) / static_cast<double>(chars) : 0.0;
}

const char* kTokenizerUsage =
    "usage: kiln tokenizer train --input FILE[,FILE...] --out PREFIX [--vocab-size N (2000)]\n"
    "                            [--model-type bpe|unigram|char|word] [--character-coverage C (0.9995)]\n"
    "                            [--max-sentences N (200000)] [--threads N (2)]\n"
    "  Trains a sentencepiece model (PREFIX.model, PREFIX.vocab) on JSONL (text fields) or text\n"
    "  files, with the special pieces of every built-in chat template defined.\n"
    "usage: kiln tokenizer extend --base BASE.model (--add EXTRA.model | --input FILE[,FILE...]\n"
    "                             --vocab-size N) --out NEW.model [--character-coverage C (1.0)]\n"
    "                             [--max-sentences N (200000)] [--threads N (2)]\n"
    "  NEW.model = BASE.model with the pieces of EXTRA.model (or of a BPE model of N pieces trained\n"
    "  on FILES) that it lacks appended: every base piece keeps its id and score, new pieces rank\n"
    "  below every base piece, duplicates and the other model's control/byte pieces are skipped.\n"
    "  Prints how many pieces were added and the tokens per character before and after on a\n"
    "  sample of FILES (given with --add too, FILES are only the sample). Then set\n"
    "  model.vocab_size to NEW.model's pieces to grow the model (README: extending the vocabulary).\n";

// A scratch directory removed on scope exit (the model trained on --input lives there).
class TempDirGuard {
 public:
  explicit TempDirGuard(std::string path) : path_(std::move(path)) {
    remove_tree(path_);
    std::error_code ec;
    if (!std::filesystem::create_directories(path_, ec) && ec)
      user_error(path_, ": cannot create directory: ", ec.message());
  }
  ~TempDirGuard() { remove_tree(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

int tokenizer_extend(int argc, char** argv) {
  const Args o = parse_args(argc, argv, 3,
                            {"base", "add", "input", "out", "vocab-size", "max-sentences", "threads",
                             "character-coverage"},
                            {});
  if (o.help) {
    std::printf("%s", kTokenizerUsage);
    return 0;
  }
  const std::string base = o.get("base"), add = o.get("add"), inputs = o.get("input"), out = o.get("out");
  if (base.empty() || out.empty() || (add.empty() == inputs.empty() && add.empty()))
    user_error("tokenizer extend: --base BASE.model, --out NEW.model and one of --add EXTRA.model or "
               "--input FILES --vocab-size N are required");
  if (!add.empty() && o.has("vocab-size"))
    user_error("tokenizer extend: --vocab-size trains a model on --input; with --add EXTRA.model it has no meaning");
  if (add.empty() && !o.has("vocab-size"))
    user_error("tokenizer extend: --input FILES needs --vocab-size N (the pieces of the model trained on them)");
  if (out == base) user_error("tokenizer extend: --out ", out, " would overwrite --base; choose another path");
  const Tokenizer before(base);  // a UserError when BASE is not a sentencepiece model
  std::vector<std::string> sentences;
  if (!inputs.empty()) sentences = read_sentences(inputs);
  if (add.empty() && sentences.empty()) user_error("tokenizer extend: --input ", inputs, " holds no text");
  std::string extra = add;
  std::unique_ptr<TempDirGuard> tmp;
  if (extra.empty()) {
    tmp = std::make_unique<TempDirGuard>(out + ".extend-tmp");
    TokenizerTrainOptions opt;
    opt.out_prefix = tmp->path() + "/extra";
    opt.vocab_size = o.get_int("vocab-size", 0);
    opt.max_sentences = o.get_int("max-sentences", 200000);
    opt.threads = o.get_int("threads", 2);
    opt.character_coverage = parse_coverage(o.get("character-coverage", "1.0"));
    std::vector<std::string> train = sentences;
    sample_sentences(train, static_cast<size_t>(std::max<int64_t>(opt.max_sentences, 1)) * 4);
    train_tokenizer(train, opt);
    extra = opt.out_prefix + ".model";
  }
  const TokenizerExtendResult r = extend_tokenizer(base, extra, out);
  const Tokenizer after(out);
  std::printf("[tokenizer] %s: %lld base pieces + %lld added (%lld already in the base, %lld control/byte skipped) = %lld\n",
              out.c_str(), (long long)r.base_pieces, (long long)r.added, (long long)r.duplicates,
              (long long)r.skipped, (long long)after.vocab_size());
  if (!sentences.empty()) {
    std::vector<std::string> sample = sentences;
    sample_sentences(sample, 2000);
    std::printf("[tokenizer] tokens per character on %zu sample lines: %.4f before, %.4f after\n", sample.size(),
                tokens_per_char(before, sample), tokens_per_char(after, sample));
  }
  return 0;
}

}  // namespace

int cmd_tokenizer(int argc, char** argv) {
  const bool help = argc >= 3 && (!std::strcmp(argv[2], "--help") || !std::strcmp(argv[2], "-h"));
  if (help) {
    std::printf("%s", kTokenizerUsage);
    return 0;
  }
  if (argc >= 3 && std::strcmp(argv[2], "extend") == 0) return tokenizer_extend(argc, argv);
  if (argc < 3 || std::strcmp(argv[2], "train") != 0)
    user_error("tokenizer: expected `kiln tokenizer train --input FILE[,FILE] --out PREFIX --vocab-size N` or "
               "`kiln tokenizer extend --base BASE.model (--add EXTRA.model | --input FILES --vocab-size N) --out NEW.model`");
  const Args o = parse_args(
      argc, argv, 3,
      {"input", "out", "vocab-size", "model-type", "max-sentences", "threads", "character-coverage"}, {});
  if (o.help) {
    std::printf("%s", kTokenizerUsage);
    return 0;
  }
  TokenizerTrainOptions opt;
  opt.out_prefix = o.get("out");
  opt.vocab_size = o.get_int("vocab-size", 2000);
  opt.model_type = o.get("model-type", "bpe");
  opt.max_sentences = o.get_int("max-sentences", 200000);
  opt.threads = o.get_int("threads", 2);
  opt.character_coverage = parse_coverage(o.get("character-coverage", "0.9995"));
  const std::string inputs = o.get("input");
  if (inputs.empty() || opt.out_prefix.empty())
    user_error("tokenizer train: --input FILE[,FILE] and --out PREFIX are required");
  std::vector<std::string> sentences = read_sentences(inputs);
  // sentencepiece samples input_sentence_size of them; cap what we hold in memory first.
  sample_sentences(sentences, static_cast<size_t>(std::max<int64_t>(opt.max_sentences, 1)) * 4);
  train_tokenizer(sentences, opt);
  std::fprintf(stderr, "[tokenizer] trained %s.model (%lld pieces, %s) on %zu sentences\n",
               opt.out_prefix.c_str(), (long long)opt.vocab_size, opt.model_type.c_str(), sentences.size());
  return 0;
}

}  // namespace kiln
