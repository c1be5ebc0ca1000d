// Issue 12's small things: the TensorBoard record framing (CRC32C from ISA-L, masked as
// TFRecord), generate's held-back partial UTF-8, and an empty config file refused.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "data/tokenizer.h"
#include "test_data_util.h"
#include "trainer/config.h"
#include "base/error.h"
#include "trainer/tensorboard.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

TEST(TensorBoard, Crc32cAndRecordFraming) {
  if (!tensorboard_supported()) GTEST_SKIP() << "built without protobuf / ISA-L";
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);  // the CRC-32C check value
  EXPECT_EQ(crc32c("", 0), 0u);
  const uint32_t c = crc32c("abc", 3);
  EXPECT_EQ(masked_crc32c("abc", 3), ((c >> 15) | (c << 17)) + 0xa282ead8u);
  const std::string rec = tf_record("hello");
  ASSERT_EQ(rec.size(), 8u + 4 + 5 + 4);
  EXPECT_EQ(rec[0], 5);  // uint64 little-endian length
  for (int i = 1; i < 8; ++i) EXPECT_EQ(rec[i], 0);
  uint32_t len_crc = 0, data_crc = 0;
  std::memcpy(&len_crc, rec.data() + 8, 4);
  std::memcpy(&data_crc, rec.data() + 17, 4);
  EXPECT_EQ(len_crc, masked_crc32c(rec.data(), 8));
  EXPECT_EQ(data_crc, masked_crc32c("hello", 5));
  EXPECT_EQ(rec.substr(12, 5), "hello");
}

TEST(TensorBoard, WriterAppendsOneRecordPerRow) {
  if (!tensorboard_supported()) GTEST_SKIP() << "built without protobuf / ISA-L";
  test::TempDir dir;
  std::string path;
  {
    TensorBoardWriter w(dir / "tb");
    path = w.path();
    EXPECT_NE(fs::path(path).filename().string().find("events.out.tfevents."), std::string::npos);
    w.add_row(nlohmann::ordered_json{{"step", 3}, {"loss", 1.5}, {"source_tokens", {{"a.jsonl", 7}}}});
  }
  const std::string bytes = test::read_text(path);
  // Two records: the file_version event and the summary; each checks out.
  size_t at = 0;
  int records = 0;
  while (at < bytes.size()) {
    uint64_t n = 0;
    std::memcpy(&n, bytes.data() + at, 8);
    uint32_t crc = 0;
    std::memcpy(&crc, bytes.data() + at + 12 + n, 4);
    EXPECT_EQ(crc, masked_crc32c(bytes.data() + at + 12, n));
    at += 16 + n;
    ++records;
  }
  EXPECT_EQ(at, bytes.size());
  EXPECT_EQ(records, 2);
  EXPECT_NE(bytes.find("brain.Event:2"), std::string::npos);
  EXPECT_NE(bytes.find("source_tokens/a.jsonl"), std::string::npos);
}

TEST(Generate, HoldsBackAnIncompleteCharacter) {
  const Tokenizer& tok = test::tokenizer();
  // A character the test vocabulary lacks: byte fallback, three byte pieces.
  const std::vector<int32_t> ids = tok.encode("fox 龘");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(tok.complete_prefix(ids), ids.size());
  for (size_t cut = 1; cut <= 2; ++cut) {
    std::vector<int32_t> part(ids.begin(), ids.end() - cut);
    const size_t keep = tok.complete_prefix(part);
    EXPECT_EQ(keep, ids.size() - 3) << cut;
    const std::string text = tok.decode(std::vector<int32_t>(part.begin(), part.begin() + keep));
    EXPECT_EQ(text.find("\xef\xbf\xbd"), std::string::npos) << text;      // no U+FFFD
    EXPECT_NE(tok.decode(part).find("\xef\xbf\xbd"), std::string::npos);  // what was printed before
  }
}

TEST(Config, EmptyFileIsRefusedNamingIt) {
  test::TempDir dir;
  for (const char* text : {"", "\n  \n", "# only a comment\n"}) {
    test::write_text(dir / "empty.yaml", text);
    try {
      load_config(dir / "empty.yaml");
      FAIL() << "accepted: '" << text << "'";
    } catch (const UserError& e) {
      EXPECT_EQ(std::string(e.what()),
                dir / "empty.yaml" +
                    ": empty config file (expected the sections model, tokenizer, data, train, ...)");
    }
  }
}

}  // namespace
}  // namespace kiln
