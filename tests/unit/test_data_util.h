// Shared helpers for the data tests: a tiny sentencepiece model trained once per process on
// tests/fixtures/data/tokenizer_corpus.txt, temp dirs, files, and a readable rendering of
// tokens + mask ("[...]" around trained runs) for golden comparisons.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/token_store.h"
#include "data/tokenizer.h"

namespace kiln::test {

inline std::string fixture(const std::string& name) {
  return std::string(KILN_SOURCE_DIR) + "/tests/fixtures/data/" + name;
}

// A fresh directory under /tmp, removed with the object.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = std::filesystem::path("/tmp") /
            ("kiln-data-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    remove_tree(path_.string());
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { remove_tree(path_.string()); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The tokenizer model path (trained on first use, in a temp dir that lives for the process).
inline const std::string& tokenizer_path() {
  static TempDir dir;
  static const std::string path = [] {
    std::vector<std::string> lines;
    std::ifstream in(fixture("tokenizer_corpus.txt"));
    for (std::string l; std::getline(in, l);)
      if (!l.empty()) lines.push_back(l);
    TokenizerTrainOptions opt;
    opt.out_prefix = dir / "tok";
    opt.vocab_size = 700;
    opt.character_coverage = 1.0;
    opt.threads = 1;
    train_tokenizer(lines, opt);
    return opt.out_prefix + ".model";
  }();
  return path;
}

inline const Tokenizer& tokenizer() {
  static Tokenizer tok(tokenizer_path());
  return tok;
}

// Pieces as text ("▁" -> " ", byte pieces -> their byte, "\n" shown as "\\n"), with every
// run of trained tokens in [ ].
inline std::string render(const Tokenizer& tok, const EncodedSample& e) {
  std::string out;
  bool open = false;
  for (size_t i = 0; i < e.tokens.size(); ++i) {
    if (e.mask[i] && !open) out += "[";
    if (!e.mask[i] && open) out += "]";
    open = e.mask[i];
    std::string p = tok.piece(e.tokens[i]);
    if (p.size() == 6 && p.rfind("<0x", 0) == 0)
      p = std::string(1, static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
    for (size_t k = 0; (k = p.find("\xe2\x96\x81", k)) != std::string::npos;) p.replace(k, 3, " ");
    for (size_t k = 0; (k = p.find('\n', k)) != std::string::npos; k += 2) p.replace(k, 1, "\\n");
    out += p;
  }
  if (open) out += "]";
  return out;
}

}  // namespace kiln::test
