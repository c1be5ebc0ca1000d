// Safetensors reader and writer: round trips of every dtype, a file written by Python's
// safetensors, and each class of malformed file rejected with a one-line error naming it.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>

#include "models/safetensors.h"
#include "test_data_util.h"
#include "base/error.h"

namespace kiln {
namespace {

std::string make_temp_dir() {
  std::string tmpl = test::temp_root() + "/kiln_safetensors_XXXXXX";
  const char* dir = mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr);
  return dir;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// u64 header length | header | data, with an explicit header length when `n` >= 0.
std::string raw_file(const std::string& header, const std::string& data, int64_t n = -1) {
  uint64_t len = n >= 0 ? static_cast<uint64_t>(n) : header.size();
  std::string out(reinterpret_cast<const char*>(&len), 8);
  return out + header + data;
}

// Runs fn, expects a UserError whose one-line message starts with `path` and contains `needle`.
void expect_user_error(const std::function<void()>& fn, const std::string& path, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const UserError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg << "\nexpected: " << needle;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir(); }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  // A malformed file from raw parts, and the expectation that opening it fails.
  void expect_rejected(const std::string& bytes, const std::string& needle) {
    const std::string p = path("bad.safetensors");
    write_bytes(p, bytes);
    expect_user_error([&] { SafetensorsFile f(p); }, p, needle);
  }
  std::string dir_;
};

TEST_F(Safetensors, RoundTripEveryDtype) {
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f64", torch::arange(6, torch::kDouble).reshape({2, 3}) / 3.0},
      {"f32", torch::arange(12, torch::kFloat).reshape({3, 4}) * -0.25},
      {"f16", torch::tensor({1.5, -2.0, 65504.0}).to(torch::kHalf)},
      {"bf16", torch::tensor({0.5, 3.0, -1e10}).to(torch::kBFloat16)},
      {"i64", torch::tensor({int64_t{-1}, int64_t{1} << 40, int64_t{7}})},
      {"i32", torch::tensor({-5, 6}, torch::kInt)},
      {"i16", torch::tensor({-300, 300}, torch::kShort)},
      {"i8", torch::tensor({-128, 127}, torch::kChar)},
      {"u8", torch::tensor({0, 255, 3}, torch::kByte)},
      {"bool", torch::tensor({true, false, true}, torch::kBool)},
      {"scalar", torch::tensor(2.5f)},                                      // shape []
      {"empty", torch::zeros({0, 3})},                                      // no bytes
      {"transposed", torch::arange(6, torch::kFloat).reshape({2, 3}).t()},  // non-contiguous
  };
  const std::string p = path("rt.safetensors");
  write_safetensors(p, tensors, {{"format", "pt"}, {"step", "12"}});

  SafetensorsFile f(p);
  EXPECT_EQ(f.names().size(), tensors.size());
  EXPECT_EQ(f.names().front(), "f64");  // data order is the order given
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"step", "12"}}));
  const std::vector<std::string> dtypes = {"F64", "F32", "F16",  "BF16", "I64", "I32", "I16",
                                           "I8",  "U8",  "BOOL", "F32",  "F32", "F32"};
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    EXPECT_EQ(f.info(name).dtype, dtypes[i]) << name;
    EXPECT_EQ(f.info(name).shape, t.sizes().vec()) << name;
    at::Tensor back = f.tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(back, t)) << name;
  }

  // Header: 8-byte aligned, padded with spaces, valid JSON followed by the data.
  std::string bytes = read_bytes(p);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_EQ(bytes[8 + n - 1] == ' ' || bytes[8 + n - 1] == '}', true);
  // f64 (48) + f32 (48) + f16 (6) + bf16 (6) + i64 (24) + i32 (8) + i16 (4) + i8 (2) + u8 (3)
  // + bool (3) + scalar (4) + empty (0) + transposed (24)
  EXPECT_EQ(bytes.size(), 8 + n + 180);
  EXPECT_EQ(access((p + ".tmp").c_str(), F_OK), -1);  // the temporary is gone
}

TEST_F(Safetensors, OverwriteReplacesTheWholeFile) {
  const std::string p = path("w.safetensors");
  write_safetensors(p, {{"a", torch::ones({100})}, {"b", torch::ones({3})}});
  write_safetensors(p, {{"c", torch::full({2}, 7.0)}});
  SafetensorsFile f(p);
  EXPECT_EQ(f.names(), std::vector<std::string>{"c"});
  EXPECT_TRUE(torch::equal(f.tensor("c"), torch::full({2}, 7.0)));
  EXPECT_TRUE(f.metadata().empty());
}

TEST_F(Safetensors, TensorViewOutlivesFileObjectAndNeverWritesTheFile) {
  const std::string p = path("v.safetensors");
  write_safetensors(p, {{"w", torch::arange(8, torch::kFloat)}});
  at::Tensor t;
  {
    SafetensorsFile f(p);
    t = f.tensor("w");
  }
  EXPECT_TRUE(torch::equal(t, torch::arange(8, torch::kFloat)));  // mapping kept alive
  t.mul_(10);
  EXPECT_FLOAT_EQ(t[3].item<float>(), 30.f);
  SafetensorsFile again(p);
  EXPECT_TRUE(torch::equal(again.tensor("w"), torch::arange(8, torch::kFloat)));
}

TEST_F(Safetensors, MisalignedDataIsCopied) {
  // u8 [3] then f32 [2]: the floats start at data offset 3, not a multiple of 4.
  float vals[2] = {1.25f, -3.5f};
  std::string data = std::string("\x01\x02\x03", 3) + std::string(reinterpret_cast<char*>(vals), 8);
  std::string header =
      R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}})";
  const std::string p = path("m.safetensors");
  write_bytes(p, raw_file(header, data));
  SafetensorsFile f(p);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(torch::equal(f.tensor("b"), torch::tensor({1.25f, -3.5f})));
  EXPECT_TRUE(torch::equal(f.tensor("a"), torch::tensor({1, 2, 3}, torch::kByte)));
}

TEST_F(Safetensors, ReadsFileWrittenByTransformers) {
  const std::string p = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/llama_linear/model.safetensors";
  SafetensorsFile f(p);
  EXPECT_EQ(f.names().size(), 3u * 9u + 3u);  // 9 tensors per layer + embed, norm, lm_head
  EXPECT_EQ(f.info("model.embed_tokens.weight").shape, (std::vector<int64_t>{96, 64}));
  EXPECT_EQ(f.info("model.layers.2.self_attn.k_proj.weight").shape, (std::vector<int64_t>{16, 64}));
  EXPECT_EQ(f.info("model.layers.0.mlp.down_proj.weight").dtype, "F32");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.tensor("model.norm.weight").sizes().vec(), std::vector<int64_t>{64});
  expect_user_error([&] { f.info("model.nope"); }, p, "tensor 'model.nope' not found");
}

TEST_F(Safetensors, RejectsFileShorterThanHeaderLength) {
  expect_rejected(std::string("\x10\x00\x00", 3), "too short for the 8-byte header length");
}

TEST_F(Safetensors, RejectsHeaderLargerThanFile) {
  expect_rejected(raw_file("{}", "", /*n=*/1000), "header length 1000 is larger than the file (10 bytes");
}

TEST_F(Safetensors, RejectsInvalidJson) {
  expect_rejected(raw_file(R"({"a": {"dtype": )", ""), "header is not valid JSON");
  expect_rejected(raw_file("[1, 2]", ""), "header is not a JSON object");
}

TEST_F(Safetensors, RejectsTruncatedFile) {
  const std::string good = path("good.safetensors");
  write_safetensors(good, {{"x", torch::ones({4})}, {"y", torch::ones({8})}});
  std::string bytes = read_bytes(good);
  expect_rejected(bytes.substr(0, bytes.size() - 4),
                  "tensor 'y': data_offsets [16, 48] run past the end of the data section (44 bytes");
}

TEST_F(Safetensors, RejectsOffsetsOutOfRange) {
  expect_rejected(
      raw_file(R"({"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}})", std::string(16, '\0')),
      "tensor 'w': data_offsets [0, 400] run past the end of the data section (16 bytes");
  expect_rejected(
      raw_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", std::string(16, '\0')),
      "tensor 'w': data_offsets [8, 4] have begin > end");
  expect_rejected(
      raw_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", std::string(16, '\0')),
      "tensor 'w': data_offsets [-4,0] must be non-negative integers");
}

TEST_F(Safetensors, RejectsSizeThatDoesNotMatchShape) {
  expect_rejected(
      raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", std::string(24, '\0')),
      "tensor 'w': data_offsets [0, 20] hold 20 bytes but F32 [2, 3] needs 24");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                           std::string(8, '\0')),
                  "needs more than 2^63");
}

TEST_F(Safetensors, RejectsOverlappingTensors) {
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                           R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                           std::string(24, '\0')),
                  "tensor 'b': data_offsets [8, 24] overlap tensor 'a' [0, 16]");
}

TEST_F(Safetensors, RejectsUnknownDtype) {
  expect_rejected(
      raw_file(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", std::string(4, '\0')),
      "tensor 'w': unknown dtype 'F8_E4M3' (valid: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
}

TEST_F(Safetensors, RejectsBadShapesAndEntries) {
  expect_rejected(
      raw_file(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0')),
      "tensor 'w': shape [-1] must hold non-negative integers");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, '\0')),
                  "tensor 'w': missing shape");
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", std::string(4, '\0')),
                  "tensor 'w': data_offsets must be [begin, end]");
  expect_rejected(raw_file(R"({"w":3})", ""), "tensor 'w': entry must be an object");
  expect_rejected(raw_file(R"({"__metadata__":{"format":1}})", ""), "__metadata__ 'format' must be a string");
}

TEST_F(Safetensors, MissingFileIsAUserError) {
  const std::string p = path("absent.safetensors");
  expect_user_error([&] { SafetensorsFile f(p); }, p, "cannot open");
}

}  // namespace
}  // namespace kiln
