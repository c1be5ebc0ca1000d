// Token store: memory-mapped reader and streaming writer (see token_store.h).
#include "data/token_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/file_io.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

std::FILE* open_write(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) user_error(path, ": cannot create (", std::strerror(errno), ")");
  return f;
}

void write_all(std::FILE* f, const void* p, size_t bytes, const std::string& what) {
  if (bytes && std::fwrite(p, 1, bytes, f) != bytes)
    user_error(what, ": write failed (", std::strerror(errno), ")");
}

void sync_close(std::FILE*& f, const std::string& what) {
  if (!f) return;
  const bool ok = std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  std::fclose(f);
  f = nullptr;
  if (!ok) user_error(what, ": write failed (", std::strerror(errno), ")");
}

}  // namespace

TokenStoreWriter::TokenStoreWriter(const std::string& dir, const std::string& prefix)
    : prefix_path_((fs::path(dir) / prefix).string()) {
  tokens_ = open_write(prefix_path_ + ".tokens");
  mask_ = open_write(prefix_path_ + ".mask");
  index_ = open_write(prefix_path_ + ".index");
  write_all(index_, &offset_, sizeof(offset_), prefix_path_);
}

TokenStoreWriter::~TokenStoreWriter() {
  for (std::FILE* f : {tokens_, mask_, index_})
    if (f) std::fclose(f);
}

void TokenStoreWriter::append(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& mask) {
  KILN_CHECK(tokens.size() == mask.size(), "tokens ", tokens.size(), " vs mask ", mask.size());
  write_all(tokens_, tokens.data(), tokens.size() * sizeof(int32_t), prefix_path_ + ".tokens");
  write_all(mask_, mask.data(), mask.size(), prefix_path_ + ".mask");
  offset_ += static_cast<int64_t>(tokens.size());
  write_all(index_, &offset_, sizeof(offset_), prefix_path_ + ".index");
  ++docs_;
}

void TokenStoreWriter::finish() {
  sync_close(tokens_, prefix_path_ + ".tokens");
  sync_close(mask_, prefix_path_ + ".mask");
  sync_close(index_, prefix_path_ + ".index");
}

bool is_token_store(const std::string& dir) { return fs::is_regular_file(fs::path(dir) / "manifest.json"); }

TokenStore::TokenStore(const std::string& dir) : dir_(dir) {
  const fs::path manifest_path = fs::path(dir) / "manifest.json";
  if (!fs::is_directory(dir)) user_error(dir, ": not a directory (expected a token store from `kiln prep`)");
  if (!fs::is_regular_file(manifest_path))
    user_error(dir, ": no manifest.json: not a complete token store (rerun `kiln prep`)");
  nlohmann::json m;
  try {
    std::ifstream in(manifest_path);
    m = nlohmann::json::parse(in);
    if (m.at("format") != "kiln-token-store" || m.at("version") != 1)
      user_error(manifest_path.string(), ": not a kiln token store version 1");
    vocab_size_ = m.at("vocab_size").get<int64_t>();
    pad_id_ = m.value("pad_id", 0);
    for (const auto& s : m.at("sources")) {
      StoreSource src;
      src.name = s.at("name").get<std::string>();
      src.weight = s.at("weight").get<double>();
      src.format = s.value("format", std::string());
      src.docs = s.at("docs").get<int64_t>();
      src.tokens = s.at("tokens").get<int64_t>();
      const std::string prefix = (fs::path(dir) / s.at("prefix").get<std::string>()).string();
      src.tokens_file = std::make_unique<MappedFile>(prefix + ".tokens");
      src.mask_file = std::make_unique<MappedFile>(prefix + ".mask");
      src.index_file = std::make_unique<MappedFile>(prefix + ".index");
      const size_t t = static_cast<size_t>(src.tokens);
      if (src.tokens_file->size() != static_cast<int64_t>(t * 4) ||
          src.mask_file->size() != static_cast<int64_t>(t) || src.index_file->size() != (src.docs + 1) * 8 ||
          src.offsets()[src.docs] != src.tokens)
        user_error(prefix, ".*: sizes do not match manifest.json (", src.docs, " docs, ", src.tokens,
                   " tokens): the store is corrupt, rerun `kiln prep`");
      sources_.push_back(std::move(src));
    }
  } catch (const nlohmann::json::exception& e) {
    user_error(manifest_path.string(), ": malformed manifest (", e.what(), ")");
  }
  if (sources_.empty()) user_error(manifest_path.string(), ": no sources");
}

}  // namespace kiln
