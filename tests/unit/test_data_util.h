// Shared helpers for the data tests: a tiny sentencepiece model trained once per process on
// tests/fixtures/data/tokenizer_corpus.txt, temp dirs, files, and a readable rendering of
// tokens + mask ("[...]" around trained runs) for golden comparisons.
#pragma once
#include <unistd.h>

#include <cstdlib>

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

// Where tests make their temporary directories: $TMPDIR, else /tmp.
inline std::string temp_root() {
  const char* t = std::getenv("TMPDIR");
  return t != nullptr && *t != '\0' ? t : "/tmp";
}

// A fresh directory under temp_root(), removed with the object.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = std::filesystem::path(temp_root()) /
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

// True for the ids a chat template inserts by id: bos, eos, pad, unk and the chat special pieces.
inline bool special_id(const Tokenizer& tok, int32_t id) {
  if (id == tok.bos_id() || id == tok.eos_id() || id == tok.pad_id() || id == 0) return true;
  const std::string p = tok.piece(id);
  for (const auto& s : chat_special_pieces())
    if (p == s) return true;
  return false;
}

// Pieces as text ("▁" -> " ", byte pieces -> their byte, "\n" shown as "\\n"), with every
// run of trained tokens in [ ] and every special id in « » ("«</s>»" is the eos id, "</s>" the
// same characters typed in a message), so goldens see what was inserted by id.
inline std::string render(const Tokenizer& tok, const EncodedSample& e) {
  std::string out;
  bool open = false;
  for (size_t i = 0; i < e.tokens.size(); ++i) {
    if (e.mask[i] && !open) out += "[";
    if (!e.mask[i] && open) out += "]";
    open = e.mask[i];
    std::string p = tok.piece(e.tokens[i]);
    if (special_id(tok, e.tokens[i])) {
      out += "\xc2\xab" + p + "\xc2\xbb";  // « »
      continue;
    }
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
