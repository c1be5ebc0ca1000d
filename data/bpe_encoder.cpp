// Native sentencepiece BPE encoding (see bpe_encoder.h).
#include "data/bpe_encoder.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <unordered_map>
#include <utility>

namespace kiln {

namespace {

// sentencepiece_model.proto: SentencePiece.Type and the fields read here.
enum PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// A protobuf wire-format walk: f(field, wire type, varint or fixed value, bytes) per field.
struct ProtoReader {
  const unsigned char* p;
  const unsigned char* end;
  bool ok = true;
  ProtoReader(const char* data, size_t n)
      : p(reinterpret_cast<const unsigned char*>(data)),
        end(reinterpret_cast<const unsigned char*>(data) + n) {}
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; p < end && shift < 64; shift += 7) {
      const unsigned char b = *p++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    ok = false;
    return 0;
  }
  template <typename F>
  bool each(F f) {
    while (ok && p < end) {
      const uint64_t tag = varint();
      const int field = static_cast<int>(tag >> 3), wire = static_cast<int>(tag & 7);
      uint64_t v = 0;
      std::string_view bytes;
      if (wire == 0) {
        v = varint();
      } else if (wire == 2) {
        const uint64_t n = varint();
        if (n > uint64_t(end - p)) return false;
        bytes = std::string_view(reinterpret_cast<const char*>(p), n);
        p += n;
      } else if (wire == 1 || wire == 5) {
        const size_t n = wire == 1 ? 8 : 4;
        if (size_t(end - p) < n) return false;
        std::memcpy(&v, p, n);  // little-endian, as protobuf
        p += n;
      } else {
        return false;
      }
      f(field, v, bytes);
    }
    return ok;
  }
};

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    p += 8;
    n -= 8;
  }
  uint64_t v = 0;
  std::memcpy(&v, p, n);
  h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 29);
}

// sentencepiece's OneCharLen: the length of the UTF-8 character a lead byte starts.
inline size_t one_char_len(unsigned char c) { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[c >> 4]; }

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as sentencepiece
// decodes it; an ASCII run is checked 8 bytes at a time.
bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t v;
      std::memcpy(&v, p + i, 8);
      if (!(v & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    const size_t len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > n) return false;
    for (size_t k = 1; k < len; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return false;
    if (len == 2 && c < 0xC2) return false;
    if (len == 3) {
      const unsigned cp = ((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
      if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    }
    if (len == 4) {
      const unsigned cp =
          ((c & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
      if (cp < 0x10000 || cp > 0x10FFFF) return false;
    }
    i += len;
  }
  return true;
}

constexpr std::string_view kSpace = "\xe2\x96\x81";  // "▁", sentencepiece's escaped space

// An open-addressing table over pieces keyed by text.
template <typename T>
const T* probe(const std::vector<T>& table, std::string_view s) {
  const uint64_t h = hash_bytes(s.data(), s.size());
  const uint32_t tag = static_cast<uint32_t>(h >> 32);
  const size_t mask = table.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    const T& e = table[i];
    if (e.id < 0) return nullptr;
    if (e.tag == tag && e.text.size() == s.size() && std::memcmp(e.text.data(), s.data(), s.size()) == 0)
      return &e;
  }
}

template <typename T>
void insert(std::vector<T>& table, T piece) {
  const uint64_t h = hash_bytes(piece.text.data(), piece.text.size());
  piece.tag = static_cast<uint32_t>(h >> 32);
  const size_t mask = table.size() - 1;
  size_t i = h & mask;
  while (table[i].id >= 0) {
    if (table[i].text == piece.text) return;  // sentencepiece keeps the first of a duplicate
    i = (i + 1) & mask;
  }
  table[i] = piece;
}

size_t table_size(size_t n) {  // a quarter full at most: most lookups of a merge miss
  size_t s = 16;
  while (s < 4 * n) s <<= 1;
  return s;
}

std::atomic<uint64_t> next_instance{1};

// [thread] "▁"-led word -> ids, for one encoder at a time: an open-addressing table that grows
// to kMaxSlots and is then cleared (a corpus's distinct words fit several times over).
struct WordCache {
  struct Entry {
    uint32_t tag = 0, key = 0, ids = 0;
    uint8_t key_len = 0, n_ids = 0;  // n_ids 0: an empty slot (every word has an id)
  };
  static constexpr size_t kMinSlots = size_t(1) << 12, kMaxSlots = size_t(1) << 20;
  static constexpr size_t kMaxWord = 64;  // longer runs (unspaced scripts) are not worth caching
  uint64_t owner = 0;
  size_t entries = 0;
  std::vector<Entry> table;
  std::string keys;
  std::vector<int32_t> ids;

  void reset(uint64_t who) {
    owner = who;
    entries = 0;
    table.assign(kMinSlots, Entry{});
    keys.clear();
    ids.clear();
  }
  Entry* find(std::string_view word, uint64_t h) {
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    const size_t mask = table.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      Entry& e = table[i];
      if (e.n_ids == 0) return &e;
      if (e.tag == tag && e.key_len == word.size() &&
          std::memcmp(keys.data() + e.key, word.data(), word.size()) == 0)
        return &e;
    }
  }
  // Room for one more entry: doubles the table at half full, clears it at kMaxSlots (true then).
  bool make_room(uint64_t who) {
    if (2 * (entries + 1) <= table.size()) return false;
    if (table.size() >= kMaxSlots) {
      reset(who);
      return true;
    }
    std::vector<Entry> old(table.size() * 2);
    old.swap(table);
    for (const Entry& e : old) {
      if (e.n_ids == 0) continue;
      const uint64_t h = hash_bytes(keys.data() + e.key, e.key_len);
      *find(std::string_view(keys.data() + e.key, e.key_len), h) = e;
    }
    return false;
  }
};

}  // namespace

std::unique_ptr<BpeEncoder> BpeEncoder::create(const std::string& model_proto) {
  // proto defaults: UNIGRAM; dummy prefix, extra whitespace removed, spaces escaped.
  int64_t model_type = 1;
  bool byte_fallback = false, ws_suffix = false, dummy = true, remove_extra = true, escape = true;
  bool charsmap = false;
  struct Raw {
    std::string_view text;
    float score = 0;
    int type = kNormal;
  };
  std::vector<Raw> raw;
  ProtoReader top(model_proto.data(), model_proto.size());
  bool ok = top.each([&](int field, uint64_t, std::string_view bytes) {
    ProtoReader sub(bytes.data(), bytes.size());
    if (field == 1) {  // SentencePiece
      Raw r;
      sub.each([&](int f, uint64_t v, std::string_view b) {
        if (f == 1) r.text = b;
        if (f == 2) {
          const uint32_t bits = static_cast<uint32_t>(v);
          std::memcpy(&r.score, &bits, 4);
        }
        if (f == 3) r.type = static_cast<int>(v);
      });
      raw.push_back(r);
    } else if (field == 2) {  // TrainerSpec
      sub.each([&](int f, uint64_t v, std::string_view) {
        if (f == 3) model_type = static_cast<int64_t>(v);
        if (f == 24) ws_suffix = v != 0;
        if (f == 35) byte_fallback = v != 0;
      });
    } else if (field == 3) {  // NormalizerSpec
      sub.each([&](int f, uint64_t v, std::string_view b) {
        if (f == 2) charsmap = !b.empty();
        if (f == 3) dummy = v != 0;
        if (f == 4) remove_extra = v != 0;
        if (f == 5) escape = v != 0;
      });
    }
  });
  if (!ok || model_type != 2 || charsmap || remove_extra || !escape || ws_suffix || raw.empty())
    return nullptr;

  std::unique_ptr<BpeEncoder> e(new BpeEncoder());
  size_t bytes = 0;
  for (const Raw& r : raw) bytes += r.text.size();
  e->storage_.reserve(bytes);
  for (const Raw& r : raw) e->storage_.append(r.text);
  e->pieces_.assign(table_size(raw.size()), Piece{{}, 0, -1, 0, 0});
  e->reserved_.assign(table_size(raw.size()), Piece{{}, 0, -1, 0, 0});
  e->types_.resize(raw.size());
  e->unk_id_ = -1;
  e->words_independent_ = true;
  size_t at = 0;
  for (size_t i = 0; i < raw.size(); ++i) {
    const Raw& r = raw[i];
    if (r.text.empty()) return nullptr;  // sentencepiece refuses such a model
    const Piece p{std::string_view(e->storage_.data() + at, r.text.size()), r.score, static_cast<int32_t>(i),
                  r.type, 0};
    at += r.text.size();
    e->types_[i] = r.type;
    const bool mergeable = r.type == kNormal || r.type == kUserDefined || r.type == kUnused;
    insert(mergeable ? e->pieces_ : e->reserved_, p);
    if (r.type == kUnknown) e->unk_id_ = static_cast<int32_t>(i);
    if (r.type == kUserDefined) {
      if (p.text.find(' ') != std::string_view::npos) return nullptr;
      e->user_.push_back(p.text);
      e->max_user_ = std::max(e->max_user_, p.text.size());
    }
    // A "▁" after the first character lets a merge cross a word boundary.
    if (mergeable && p.text.find(kSpace, 1) != std::string_view::npos) e->words_independent_ = false;
  }
  if (e->unk_id_ < 0) return nullptr;
  // sentencepiece looks a piece up among the reserved ones first: a mergeable piece with a
  // reserved one's text (no trainer makes one) answers the reserved id.
  for (const Piece& p : e->pieces_)
    if (p.id >= 0 && probe(e->reserved_, p.text)) e->reserved_overlap_ = true;
  e->byte_fallback_ = byte_fallback;
  // Without byte fallback a run of unknown pieces is one unk; a word then starts with a known
  // piece only if "▁" itself is known, else two words could each end and start a run.
  if (!byte_fallback && !probe(e->pieces_, kSpace)) e->words_independent_ = false;
  e->dummy_prefix_ = dummy;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    e->byte_ids_[b] = e->piece_to_id(name);
  }
  e->instance_ = next_instance++;
  return e;
}

BpeEncoder::~BpeEncoder() = default;

const BpeEncoder::Piece* BpeEncoder::find(std::string_view s) const { return probe(pieces_, s); }

int32_t BpeEncoder::piece_to_id(std::string_view s) const {
  if (const Piece* p = probe(reserved_, s)) return p->id;
  if (const Piece* p = probe(pieces_, s)) return p->id;
  return unk_id_;
}

size_t BpeEncoder::prefix_match(std::string_view s, bool* user_defined) const {
  size_t best = 0;
  for (std::string_view u : user_)
    if (u.size() > best && s.size() >= u.size() && std::memcmp(s.data(), u.data(), u.size()) == 0)
      best = u.size();
  *user_defined = best > 0;
  return best > 0 ? best : std::min(s.size(), one_char_len(static_cast<unsigned char>(s[0])));
}

void BpeEncoder::normalize(std::string_view text, std::string& out) const {
  out.clear();
  if (text.empty()) return;
  if (dummy_prefix_) out.append(kSpace);
  size_t i = 0;
  for (size_t j; (j = text.find(' ', i)) != std::string_view::npos; i = j + 1) {
    out.append(text.data() + i, j - i);
    out.append(kSpace);
  }
  out.append(text.data() + i, text.size() - i);
}

void BpeEncoder::encode_normalized(std::string_view norm, std::vector<int32_t>& out) const {
  if (norm.empty()) return;
  struct Symbol {
    int32_t prev, next;
    uint32_t begin, len;
    int32_t id;  // the merged piece's id; -1 for a symbol as split (looked up at the end)
    bool freeze;
  };
  struct Pair {
    float score;
    int32_t left, right;
    uint32_t size;
    int32_t id;
  };
  // sentencepiece's agenda order: the highest score first, the leftmost on ties.
  const auto lower = [](const Pair& a, const Pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  thread_local std::vector<Symbol> syms;
  thread_local std::vector<Pair> agenda;
  thread_local std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  syms.clear();
  agenda.clear();
  rev_merge.clear();
  const char* base = norm.data();
  for (size_t i = 0; i < norm.size();) {
    bool user = false;
    const size_t len = user_.empty()
                           ? std::min(norm.size() - i, one_char_len(static_cast<unsigned char>(norm[i])))
                           : prefix_match(norm.substr(i), &user);
    const int32_t k = static_cast<int32_t>(syms.size());
    syms.push_back({k - 1, k + 1, static_cast<uint32_t>(i), static_cast<uint32_t>(len), -1, user});
    i += len;
  }
  syms.back().next = -1;
  const auto maybe_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || syms[l].freeze || syms[r].freeze) return;
    const std::string_view piece(base + syms[l].begin, syms[l].len + syms[r].len);
    const Piece* p = find(piece);
    if (!p) return;
    agenda.push_back({p->score, l, r, static_cast<uint32_t>(piece.size()), p->id});
    std::push_heap(agenda.begin(), agenda.end(), lower);
    if (p->type == kUnused)
      rev_merge[piece] = {std::string_view(base + syms[l].begin, syms[l].len),
                          std::string_view(base + syms[r].begin, syms[r].len)};
  };
  for (int32_t i = 1; i < static_cast<int32_t>(syms.size()); ++i) maybe_add(i - 1, i);
  while (!agenda.empty()) {
    std::pop_heap(agenda.begin(), agenda.end(), lower);
    const Pair top = agenda.back();
    agenda.pop_back();
    Symbol& l = syms[top.left];
    Symbol& r = syms[top.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != top.size) continue;  // stale
    l.len += r.len;
    l.id = top.id;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = top.left;
    r.len = 0;
    maybe_add(l.prev, top.left);
    maybe_add(top.left, l.next);
  }
  // Output as sentencepiece's PopulateSentencePieceText: byte fallback for unknown pieces, or
  // one unk for a run of them.
  bool prev_unk = false;
  const auto emit = [&](std::string_view w, int32_t id) {
    const bool unk = types_[id] == kUnknown;
    if (types_[id] == kControl) {
      out.push_back(id);
    } else if (unk && byte_fallback_) {
      for (unsigned char b : w) out.push_back(byte_ids_[b]);
    } else if (!(unk && prev_unk)) {
      out.push_back(id);
    }
    prev_unk = unk;
  };
  const auto resegment = [&](std::string_view w, int32_t known, const auto& self) -> void {
    const int32_t id = known >= 0 && !reserved_overlap_ ? known : piece_to_id(w);
    if (types_[id] != kUnused) return emit(w, id);
    const auto it = rev_merge.find(w);
    if (it == rev_merge.end()) return emit(w, id);
    self(it->second.first, -1, self);
    self(it->second.second, -1, self);
  };
  for (int32_t i = 0; i != -1; i = syms[i].next)
    resegment(std::string_view(base + syms[i].begin, syms[i].len), syms[i].id, resegment);
}

bool BpeEncoder::encode_uncached(std::string_view text, std::vector<int32_t>& out) const {
  if (!valid_utf8(text)) return false;
  thread_local std::string norm;
  normalize(text, norm);
  encode_normalized(norm, out);
  return true;
}

bool BpeEncoder::encode(std::string_view text, std::vector<int32_t>& out) const {
  if (!words_independent_) return encode_uncached(text, out);
  if (!valid_utf8(text)) return false;
  thread_local std::string norm;
  thread_local WordCache cache;
  if (cache.owner != instance_) cache.reset(instance_);
  normalize(text, norm);
  const std::string_view all(norm);
  size_t i = 0;
  while (i < all.size()) {
    size_t j = i + 1;  // a word runs up to the next "▁", which starts the next
    while (true) {
      const void* hit = std::memchr(all.data() + j, kSpace[0], all.size() - j);
      if (!hit) {
        j = all.size();
        break;
      }
      j = static_cast<const char*>(hit) - all.data();
      if (all.compare(j, kSpace.size(), kSpace) == 0) break;
      ++j;
    }
    const std::string_view word = all.substr(i, j - i);
    i = j;
    if (word.size() > WordCache::kMaxWord) {
      encode_normalized(word, out);
      continue;
    }
    const uint64_t h = hash_bytes(word.data(), word.size());
    WordCache::Entry* e = cache.find(word, h);
    if (e->n_ids == 0) {
      const size_t first = cache.ids.size();
      encode_normalized(word, cache.ids);
      const size_t n = cache.ids.size() - first;
      if (n > 255) {  // more ids than an entry counts: not cached
        out.insert(out.end(), cache.ids.begin() + first, cache.ids.end());
        cache.ids.resize(first);
        continue;
      }
      if (cache.make_room(instance_)) encode_normalized(word, cache.ids);  // cleared with the table
      e = cache.find(word, h);
      e->tag = static_cast<uint32_t>(h >> 32);
      e->key = static_cast<uint32_t>(cache.keys.size());
      e->key_len = static_cast<uint8_t>(word.size());
      cache.keys.append(word);
      e->ids = static_cast<uint32_t>(cache.ids.size() - n);
      e->n_ids = static_cast<uint8_t>(n);
      ++cache.entries;
    }
    out.insert(out.end(), cache.ids.begin() + e->ids, cache.ids.begin() + e->ids + e->n_ids);
  }
  return true;
}

}  // namespace kiln
