// `kiln tokenizer extend` (issue 14): the ModelProto passes through protobuf-c unchanged; every
// base piece keeps its id, score and type; text the base covers encodes to the same ids; Chinese
// text takes fewer tokens; encode/decode round-trips; duplicates are skipped.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "data/tokenizer.h"
#include "data/tokenizer_extend.h"
#include "test_data_util.h"
#include "base/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

// A BPE model of the Chinese fixture, as `kiln tokenizer extend --input` trains it.
std::string zh_model(const TempDir& dir) {
  TokenizerTrainOptions opt;
  opt.out_prefix = dir / "zh";
  opt.vocab_size = 600;
  opt.character_coverage = 1.0;
  opt.threads = 1;
  train_tokenizer(lines_of(test::fixture("zh_corpus.txt")), opt);
  return opt.out_prefix + ".model";
}

std::unique_ptr<sentencepiece::SentencePieceProcessor> load(const std::string& path) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  EXPECT_TRUE(sp->Load(path).ok()) << path;
  return sp;
}

TEST(TokenizerExtend, UnchangedRoundTripIsByteIdentical) {
  if (!tokenizer_extend_available()) GTEST_SKIP() << "built without protobuf-c";
  TempDir dir;
  for (const std::string& path : {test::tokenizer_path(), zh_model(dir)}) {
    const std::string bytes = bytes_of(path);
    ASSERT_GT(bytes.size(), 1000u);
    EXPECT_EQ(roundtrip_model_proto(bytes, path), bytes) << path;
  }
  EXPECT_THROW(roundtrip_model_proto("not a model proto \x01\x02", "x.model"), UserError);
}

TEST(TokenizerExtend, BasePiecesKeepIdsAndChineseTakesFewerTokens) {
  if (!tokenizer_extend_available()) GTEST_SKIP() << "built without protobuf-c";
  TempDir dir;
  const std::string base_path = test::tokenizer_path(), extra_path = zh_model(dir), out = dir / "ext.model";
  const TokenizerExtendResult r = extend_tokenizer(base_path, extra_path, out);
  EXPECT_FALSE(fs::exists(out + ".tmp"));
  auto base_sp = load(base_path), extra_sp = load(extra_path), ext_sp = load(out);
  const sentencepiece::SentencePieceProcessor &base = *base_sp, &extra = *extra_sp, &ext = *ext_sp;
  ASSERT_EQ(r.base_pieces, base.GetPieceSize());
  ASSERT_EQ(ext.GetPieceSize(), base.GetPieceSize() + r.added);
  // Every base piece: same id, text, score and type; every new piece below every base score.
  float base_min = 1e30f;
  for (int i = 0; i < base.GetPieceSize(); ++i) {
    ASSERT_EQ(ext.IdToPiece(i), base.IdToPiece(i)) << i;
    EXPECT_EQ(ext.GetScore(i), base.GetScore(i)) << i;
    EXPECT_EQ(ext.IsControl(i), base.IsControl(i));
    EXPECT_EQ(ext.IsByte(i), base.IsByte(i));
    base_min = std::min(base_min, base.GetScore(i));
  }
  for (const std::string& s : chat_special_pieces()) EXPECT_EQ(ext.PieceToId(s), base.PieceToId(s)) << s;
  // New pieces: the Chinese model's normal pieces the base lacks, each once, in its order.
  std::set<std::string> seen;
  int64_t expect_added = 0, expect_dup = 0;
  for (int i = 0; i < extra.GetPieceSize(); ++i) {
    if (extra.IsControl(i) || extra.IsUnknown(i) || extra.IsByte(i) || extra.IsUnused(i)) continue;
    if (base.PieceToId(extra.IdToPiece(i)) != base.unk_id() ||
        extra.IdToPiece(i) == base.IdToPiece(base.unk_id()))
      ++expect_dup;
    else
      ++expect_added;
  }
  EXPECT_EQ(r.added, expect_added);
  EXPECT_EQ(r.duplicates, expect_dup);
  EXPECT_GT(r.added, 250);
  for (int i = 0; i < ext.GetPieceSize(); ++i)
    EXPECT_TRUE(seen.insert(ext.IdToPiece(i)).second) << "duplicate";
  for (int i = base.GetPieceSize(); i < ext.GetPieceSize(); ++i) EXPECT_LT(ext.GetScore(i), base_min);

  // The base's own corpus: every line that holds none of the new pieces' characters (its
  // English, here) encodes to the same ids. (Its Chinese lines may merge into the new pieces:
  // that is where the savings come from.) The Chinese fixture: fewer tokens.
  Tokenizer before(base_path), after(out);
  int64_t same = 0;
  for (const std::string& line : lines_of(test::fixture("tokenizer_corpus.txt"))) {
    if (std::any_of(line.begin(), line.end(), [](unsigned char c) { return c >= 0x80; })) continue;
    ASSERT_EQ(after.encode(line), before.encode(line)) << line;
    EXPECT_EQ(after.decode(after.encode(line)), line);
    ++same;
  }
  EXPECT_EQ(same, 20);  // the fixture's English lines
  int64_t zh_before = 0, zh_after = 0, chars = 0;
  for (const std::string& line : lines_of(test::fixture("zh_corpus.txt"))) {
    const std::vector<int32_t> ids = after.encode(line);
    zh_before += static_cast<int64_t>(before.encode(line).size());
    zh_after += static_cast<int64_t>(ids.size());
    for (unsigned char c : line) chars += (c & 0xC0) != 0x80;
    EXPECT_EQ(after.decode(ids), line);  // round trip
  }
  const std::string mixed = "今天天气很好 and the quick brown fox, 我们去公园。";
  EXPECT_EQ(after.decode(after.encode(mixed)), mixed);
  std::printf(
      "[ tokens ] Chinese fixture, %lld chars: %lld tokens with the base, %lld extended (%.3f -> %.3f per "
      "char)\n",
      (long long)chars, (long long)zh_before, (long long)zh_after, double(zh_before) / chars,
      double(zh_after) / chars);
  EXPECT_LT(zh_after * 2, zh_before);  // measured: see the printed line
}

TEST(TokenizerExtend, BadModelsAreNamed) {
  if (!tokenizer_extend_available()) GTEST_SKIP() << "built without protobuf-c";
  TempDir dir;
  test::write_text(dir / "bad.model", "\xff\xff\xff garbage");
  try {
    extend_tokenizer(dir / "bad.model", test::tokenizer_path(), dir / "out.model");
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.model: not a sentencepiece model"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "out.model"));
}

}  // namespace
}  // namespace kiln
