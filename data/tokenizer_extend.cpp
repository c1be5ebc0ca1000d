// Extending a sentencepiece model through protobuf-c (see tokenizer_extend.h).
#include "data/tokenizer_extend.h"

#include <fstream>
#include <sstream>

#include "base/error.h"
#include "base/file_io.h"

#ifdef KILN_WITH_SPM_PROTO
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <set>
#include <vector>

#include "sentencepiece_model.pb-c.h"  // generated into the build dir from data/sentencepiece_model.proto
#endif

namespace kiln {

#ifdef KILN_WITH_SPM_PROTO

namespace {

using Piece = Kiln__Spm__ModelProto__SentencePiece;
using Model = Kiln__Spm__ModelProto;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) user_error(path, ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The unpacked model, freed with protobuf-c's allocator.
struct ModelDeleter {
  void operator()(Model* m) const { kiln__spm__model_proto__free_unpacked(m, nullptr); }
};
using ModelPtr = std::unique_ptr<Model, ModelDeleter>;

ModelPtr unpack(const std::string& bytes, const std::string& what) {
  Model* m =
      kiln__spm__model_proto__unpack(nullptr, bytes.size(), reinterpret_cast<const uint8_t*>(bytes.data()));
  if (!m) user_error(what, ": not a sentencepiece model (the ModelProto does not parse)");
  ModelPtr out(m);
  if (out->n_pieces == 0) user_error(what, ": a sentencepiece model without pieces");
  for (size_t i = 0; i < out->n_pieces; ++i)
    if (!out->pieces[i]->piece) user_error(what, ": piece ", i, " has no text");
  return out;
}

std::string pack(const Model& m) {
  std::string out(kiln__spm__model_proto__get_packed_size(&m), '\0');
  const size_t n = kiln__spm__model_proto__pack(&m, reinterpret_cast<uint8_t*>(&out[0]));
  KILN_CHECK(n == out.size(), "protobuf-c packed ", n, " of ", out.size(), " bytes");
  return out;
}

int type_of(const Piece& p) {
  return p.has_type ? p.type : KILN__SPM__MODEL_PROTO__SENTENCE_PIECE__TYPE__NORMAL;
}

}  // namespace

bool tokenizer_extend_available() { return true; }

std::string roundtrip_model_proto(const std::string& bytes, const std::string& what) {
  return pack(*unpack(bytes, what));
}

TokenizerExtendResult extend_tokenizer(const std::string& base_path, const std::string& extra_path,
                                       const std::string& out_path) {
  ModelPtr base = unpack(read_bytes(base_path), base_path);
  ModelPtr extra = unpack(read_bytes(extra_path), extra_path);
  TokenizerExtendResult r;
  r.base_pieces = static_cast<int64_t>(base->n_pieces);
  std::set<std::string> have;
  float base_min = std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < base->n_pieces; ++i) {
    have.insert(base->pieces[i]->piece);
    if (base->pieces[i]->has_score) base_min = std::min(base_min, base->pieces[i]->score);
  }
  if (!std::isfinite(base_min)) base_min = 0;
  // The other model's pieces to append, in its order; scores shifted so that its best lies 1
  // below the base's worst (relative order kept, every base piece ranked first).
  std::vector<const Piece*> chosen;
  float extra_max = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < extra->n_pieces; ++i) {
    const Piece& p = *extra->pieces[i];
    const int t = type_of(p);
    if (t != KILN__SPM__MODEL_PROTO__SENTENCE_PIECE__TYPE__NORMAL &&
        t != KILN__SPM__MODEL_PROTO__SENTENCE_PIECE__TYPE__USER_DEFINED) {
      ++r.skipped;
      continue;
    }
    if (!have.insert(p.piece).second) {
      ++r.duplicates;
      continue;
    }
    chosen.push_back(&p);
    if (p.has_score) extra_max = std::max(extra_max, p.score);
  }
  if (!std::isfinite(extra_max)) extra_max = 0;
  std::vector<Piece> added(chosen.size());  // owned here; the strings stay the extra model's
  std::vector<Piece*> all(base->pieces, base->pieces + base->n_pieces);
  for (size_t i = 0; i < chosen.size(); ++i) {
    Piece& p = added[i];
    kiln__spm__model_proto__sentence_piece__init(&p);
    p.piece = chosen[i]->piece;
    p.has_score = 1;
    p.score = base_min - 1.0f + ((chosen[i]->has_score ? chosen[i]->score : 0.0f) - extra_max);
    const int t = type_of(*chosen[i]);
    if (t != KILN__SPM__MODEL_PROTO__SENTENCE_PIECE__TYPE__NORMAL) {
      p.has_type = 1;
      p.type = static_cast<Kiln__Spm__ModelProto__SentencePiece__Type>(t);
    }
    all.push_back(&p);
  }
  r.added = static_cast<int64_t>(added.size());
  // Pack with the longer list in place, then give the base its own array back before it is freed.
  Piece** own = base->pieces;
  const size_t own_n = base->n_pieces;
  base->pieces = all.data();
  base->n_pieces = all.size();
  std::string bytes;
  try {
    bytes = pack(*base);
  } catch (...) {
    base->pieces = own;
    base->n_pieces = own_n;
    throw;
  }
  base->pieces = own;
  base->n_pieces = own_n;
  write_file_atomic(out_path, bytes);
  return r;
}

#else

bool tokenizer_extend_available() { return false; }

namespace {
[[noreturn]] void unavailable() {
  user_error(
      "kiln tokenizer extend: this build has no protobuf-c (apt-get install libprotobuf-c-dev "
      "protobuf-c-compiler, then ./scripts/setup.sh)");
}
}  // namespace

std::string roundtrip_model_proto(const std::string&, const std::string&) { unavailable(); }
TokenizerExtendResult extend_tokenizer(const std::string&, const std::string&, const std::string&) {
  unavailable();
}

#endif

}  // namespace kiln
