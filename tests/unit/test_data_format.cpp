// Data tests: tokenizer, sample formats, chat templates and golden per-token loss masks.
#include <gtest/gtest.h>

#include <sentencepiece_trainer.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "base/error.h"
#include "data/chat_template.h"
#include "data/sample_format.h"
#include "data/tokenizer.h"
#include "tests/unit/test_data_util.h"

namespace kiln {
namespace {

using nlohmann::json;
using test::render;
using test::tokenizer;

Sample single_turn() {
  Sample s;
  s.turns = {{"user", "hi there"}, {"assistant", "hello"}};
  return s;
}

Sample multi_turn() {
  Sample s;
  s.turns = {{"user", "q one"}, {"assistant", "a one"}, {"user", "q two"}, {"assistant", "a two"}};
  return s;
}

std::string golden(const std::string& tmpl, const Sample& s, const std::string& loss,
                   const std::map<std::string, std::string>& custom = {}) {
  SampleEncoder enc(tokenizer(), chat_template(tmpl, custom), loss);
  return render(tokenizer(), enc.encode(s));
}

TEST(DataTokenizer, RoundTripAndSpecialPiecesByName) {
  const Tokenizer& tok = tokenizer();
  const std::string text = "The quick brown fox. 床前明月光";
  EXPECT_EQ(tok.decode(tok.encode(text)), text);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), 3);
  EXPECT_EQ(tok.piece(tok.bos_id()), "<s>");
  for (const auto& p : chat_special_pieces()) {
    ASSERT_GE(tok.piece_id(p), 0) << p;
    EXPECT_EQ(tok.piece(tok.piece_id(p)), p);
  }
  EXPECT_EQ(tok.piece_id("<not-a-piece>"), -1);
  EXPECT_EQ(tok.piece_id("<unk>"), 0);
  // Byte fallback: a character never seen in training still round-trips.
  EXPECT_EQ(tok.decode(tok.encode("€")), "€");
  try {
    tok.require_piece("<|nope|>", "template custom");
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("template custom needs the special token <|nope|>"),
              std::string::npos)
        << e.what();
  }
}

// Texts that exercise every path of the native encoder: runs of spaces, leading and trailing
// spaces, tabs and newlines, the chat specials (user-defined symbols, never merged), characters
// the vocabulary lacks (byte fallback or unk), scripts without spaces, emoji, long words.
std::vector<std::string> encoder_texts() {
  std::vector<std::string> texts = {"a  b",
                                    "  two leading",
                                    "trailing  ",
                                    " ",
                                    "",
                                    "tab\tand\nnewline here",
                                    "<_user>q one<_bot>a one <_end>",
                                    "<_user><_user> <|im_start|>user\nhi<|im_end|>",
                                    "€ 床前明月光，疑是地上霜。 x",
                                    "😀🤖 Ω≈ç √∫ ñ",
                                    std::string(200, 'a') + " " + std::string(100, ' ') + "z"};
  std::ifstream in(test::fixture("tokenizer_corpus.txt"));
  for (std::string l; std::getline(in, l);) texts.push_back(l);
  std::ifstream zh(test::fixture("zh_corpus.txt"));
  for (std::string l; std::getline(zh, l);) texts.push_back(l);
  // Random mixtures of those pieces.
  const std::vector<std::string> parts = {"the",   " ",      "  ",     "ing",        "\t", "\n",
                                          "床前",  "明月光", "<_bot>", "€",          "😀",  "x",
                                          "Hello", ",",      "。",     "<|im_end|>", "12", "\xc3\xa9"};
  std::mt19937 rng(7);
  for (int t = 0; t < 300; ++t) {
    std::string s;
    for (int k = 0, n = 1 + static_cast<int>(rng() % 30); k < n; ++k) s += parts[rng() % parts.size()];
    texts.push_back(s);
  }
  return texts;
}

// encode (word cache), encode_uncached (native, whole text) and sentencepiece's encode_plain agree.
void expect_native_equals_sentencepiece(const Tokenizer& tok) {
  const auto texts = encoder_texts();
  for (int pass = 0; pass < 2; ++pass)  // the second pass is served from the word cache
    for (const auto& t : texts) {
      const auto ref = tok.encode_plain(t);
      EXPECT_EQ(tok.encode(t), ref) << t;
      EXPECT_EQ(tok.encode_uncached(t), ref) << t;
    }
  const std::string bad = "ok \xff\xfe then";  // invalid UTF-8: sentencepiece's replacement rule
  EXPECT_EQ(tok.encode(bad), tok.encode_plain(bad));
}

// A sentencepiece model trained on the fixture corpora, plus indented lines (runs of spaces), with
// `options` ("--key=value ...").
std::string train_model(const test::TempDir& tmp, const std::string& name, const std::string& options) {
  {
    std::ofstream code(tmp / "indented.txt");
    for (int i = 0; i < 300; ++i) code << "    if (x) {\n        return  y" << i << ";\n    }\n";
  }
  const std::string args = "--input=" + test::fixture("tokenizer_corpus.txt") + "," +
                           test::fixture("zh_corpus.txt") + "," + (tmp / "indented.txt") +
                           " --model_prefix=" + (tmp / name) + " --minloglevel=2 --hard_vocab_limit=false " +
                           options;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  EXPECT_TRUE(status.ok()) << args << ": " << status.ToString();
  return tmp / (name + ".model");
}

TEST(DataTokenizer, NativeEncoderGivesExactlySentencepiecesIds) {
  const Tokenizer& tok = tokenizer();
  ASSERT_TRUE(tok.native());      // kiln-trained: BPE, identity normalization, no dummy prefix
  ASSERT_TRUE(tok.word_cache());  // and no piece with an inner "▁"
  expect_native_equals_sentencepiece(tok);
}

TEST(DataTokenizer, NativeEncoderOnLlamaStyleModels) {
  test::TempDir tmp;
  // Llama's settings: identity, dummy prefix, whitespace kept, byte fallback, digits split, and
  // whitespace-only pieces ("▁▁"), which merge across words: no word cache there.
  const std::string llama = train_model(
      tmp, "llama",
      "--vocab_size=1500 --model_type=bpe --normalization_rule_name=identity --add_dummy_prefix=true "
      "--remove_extra_whitespaces=false --byte_fallback=true --split_digits=true "
      "--allow_whitespace_only_pieces=true --user_defined_symbols=<_bot>,<|im_end|> "
      "--character_coverage=0.9995");
  Tokenizer a(llama);
  ASSERT_TRUE(a.native());
  ASSERT_GE(a.piece_id("▁▁▁▁"), 0);
  EXPECT_FALSE(a.word_cache()) << "a whitespace-only piece crosses words";
  EXPECT_EQ(a.encode("    if (x)"), a.encode_plain("    if (x)"));
  expect_native_equals_sentencepiece(a);
  // Without byte fallback, a run of unknown characters is one unk; the word cache stays exact
  // only while "▁" is a piece of its own.
  const std::string unk = train_model(tmp, "unk",
                                      "--vocab_size=1000 --model_type=bpe --normalization_rule_name=identity "
                                      "--add_dummy_prefix=false --remove_extra_whitespaces=false "
                                      "--character_coverage=0.98");
  Tokenizer b(unk);
  ASSERT_TRUE(b.native());
  expect_native_equals_sentencepiece(b);
  EXPECT_EQ(b.encode("😀🤖"), std::vector<int32_t>{b.piece_id("<unk>")});
}

TEST(DataTokenizer, NoWordCacheForNormalizingModels) {
  // sentencepiece's defaults (nmt_nfkc, dummy prefix, extra whitespace removed): encoding word
  // by word would differ, so the cache stays off.
  test::TempDir tmp;
  const std::string args = "--input=" + test::fixture("tokenizer_corpus.txt") +
                           " --model_prefix=" + (tmp / "llama") +
                           " --vocab_size=400 --model_type=bpe --character_coverage=1.0 --minloglevel=2";
  ASSERT_TRUE(sentencepiece::SentencePieceTrainer::Train(args).ok());
  Tokenizer llama_like(tmp / "llama.model");
  EXPECT_FALSE(llama_like.native());
  EXPECT_FALSE(llama_like.word_cache());
  // The normalization a word cache would bypass is really there: this model drops the extra
  // space and the kiln-trained one keeps it, and encode() still agrees with it.
  EXPECT_EQ(llama_like.encode("a  b"), llama_like.encode("a b"));
  EXPECT_NE(tokenizer().encode("a  b"), tokenizer().encode("a b"));
}

TEST(DataTokenizer, MissingModelIsAUserError) {
  try {
    Tokenizer t("/nonexistent/tok.model");
    FAIL();
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()),
              "/nonexistent/tok.model: tokenizer model not found (expected a sentencepiece .model file)");
  }
}

TEST(DataFormat, DetectsEveryFormat) {
  EXPECT_EQ(detect_format(json::parse(R"({"text":"x"})")), "text");
  EXPECT_EQ(detect_format(json::parse(R"({"instruction":"x","input":"","output":"y"})")), "alpaca");
  EXPECT_EQ(detect_format(json::parse(R"({"input":"x","output":"y"})")), "telechat");
  EXPECT_EQ(detect_format(json::parse(R"({"conversation":[]})")), "firefly");
  EXPECT_EQ(detect_format(json::parse(R"({"messages":[]})")), "messages");
  EXPECT_EQ(detect_format(json::parse(R"({"prompt":"x"})")), "");
  EXPECT_EQ(detect_format(json::parse(R"([1])")), "");
}

std::string turns_of(const Sample& s) {
  std::string out = s.system.empty() ? "" : "system:" + s.system + "|";
  for (const auto& t : s.turns) out += t.role + ":" + t.content + "|";
  return out;
}

TEST(DataFormat, ParsesEveryFormatSingleAndMultiTurn) {
  Sample t = parse_sample(json::parse(R"({"text":"hello world"})"), "text");
  EXPECT_TRUE(t.is_text);
  EXPECT_EQ(t.text, "hello world");
  EXPECT_EQ(turns_of(parse_sample(json::parse(R"({"instruction":"Translate","input":"cat","output":"chat"})"),
                                  "alpaca")),
            "user:Translate\ncat|assistant:chat|");
  EXPECT_EQ(turns_of(parse_sample(json::parse(R"({"instruction":"Say hi","output":"hi"})"), "alpaca")),
            "user:Say hi|assistant:hi|");
  EXPECT_EQ(turns_of(parse_sample(json::parse(R"({"input":"q one","output":"a one"})"), "telechat")),
            "user:q one|assistant:a one|");
  EXPECT_EQ(
      turns_of(parse_sample(
          json::parse(R"({"input":"<_user>q one<_bot>a one<_end><_user>q two<_bot>","output":"a two"})"),
          "telechat")),
      "user:q one|assistant:a one|user:q two|assistant:a two|");
  EXPECT_EQ(turns_of(parse_sample(json::parse(R"({"input":"<_user>q one","output":"a one"})"), "telechat")),
            "user:q one|assistant:a one|");
  EXPECT_EQ(
      turns_of(parse_sample(
          json::parse(
              R"({"system":"Be brief.","conversation":[{"human":"q one","assistant":"a one"},{"human":"q two","assistant":"a two"}]})"),
          "firefly")),
      "system:Be brief.|user:q one|assistant:a one|user:q two|assistant:a two|");
  EXPECT_EQ(
      turns_of(parse_sample(
          json::parse(
              R"({"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"q one"},{"role":"assistant","content":"a one"}]})"),
          "messages")),
      "system:Be brief.|user:q one|assistant:a one|");
}

std::string sample_error(const std::string& line, const std::string& format) {
  try {
    parse_sample(json::parse(line), format);
  } catch (const SampleError& e) {
    return e.what();
  }
  return "no error";
}

TEST(DataFormat, FieldErrorsSayWhatIsWrong) {
  EXPECT_EQ(sample_error(R"({"txt":"x"})", "text"), "missing field \"text\" (format text)");
  EXPECT_EQ(sample_error(R"({"text":5})", "text"), "field \"text\" must be a string, got number");
  EXPECT_EQ(sample_error(R"({"instruction":"x"})", "alpaca"), "missing field \"output\" (format alpaca)");
  EXPECT_EQ(sample_error(R"({"conversation":[{"human":"x"}]})", "firefly"),
            "missing field \"assistant\" (format firefly)");
  EXPECT_EQ(sample_error(R"({"conversation":{}})", "firefly"),
            "field \"conversation\" must be a non-empty array of {human, assistant}");
  EXPECT_EQ(sample_error(R"({"messages":[{"role":"bot","content":"x"}]})", "messages"),
            "unknown role \"bot\" (expected system, user or assistant)");
  EXPECT_EQ(sample_error(R"({"messages":[{"role":"user","content":"x"}]})", "messages"),
            "the last message must be from the assistant");
  EXPECT_EQ(sample_error(R"({"messages":[{"role":"assistant","content":"x"}]})", "messages"),
            "message 1 has role assistant; expected user (user and assistant alternate, starting with user)");
  EXPECT_EQ(sample_error(R"({"input":"<_user>q<_bot>a","output":"b"})", "telechat"),
            "field \"input\": the answer at byte 14 lacks its <_end>");
  EXPECT_EQ(sample_error(R"({"input":"x<_user>q","output":"b"})", "telechat"),
            "field \"input\": expected <_user> at byte 0 (history is <_user>q<_bot>a<_end>... ending with "
            "<_user>q<_bot>)");
  EXPECT_EQ(sample_error(R"(["text"])", "text"), "expected a JSON object, got array");
}

TEST(DataFormat, Utf8Validation) {
  EXPECT_NO_THROW(check_utf8("plain ascii"));
  EXPECT_NO_THROW(check_utf8("床前明月光 €"));
  auto bad = [](const std::string& s) {
    try {
      check_utf8(s);
    } catch (const SampleError& e) {
      return std::string(e.what());
    }
    return std::string("valid");
  };
  EXPECT_EQ(bad("ab\xff"), "invalid UTF-8 at byte 3");
  EXPECT_EQ(bad("a\xe5\xba"), "invalid UTF-8 at byte 2");      // truncated sequence
  EXPECT_EQ(bad("\xc0\xaf"), "invalid UTF-8 at byte 1");       // overlong "/"
  EXPECT_EQ(bad("x\xed\xa0\x80"), "invalid UTF-8 at byte 2");  // surrogate
}

struct GoldenCase {
  std::string tmpl, which, loss, expected;
};

TEST(DataTemplate, GoldenMasksEveryTemplateSingleAndMultiTurn) {
  const std::vector<GoldenCase> cases = {
      {"firefly", "single", "all_turns", "«<s>»hi there«</s>»[hello«</s>»]"},
      {"firefly", "multi", "all_turns", "«<s>»q one«</s>»[a one«</s>»]q two«</s>»[a two«</s>»]"},
      {"firefly", "multi", "last_turn", "«<s>»q one«</s>»a one«</s>»q two«</s>»[a two«</s>»]"},
      {"xuanyuan", "single", "all_turns", "«<s>»{XS} Human: hi there Assistant:[ hello«</s>»]"},
      {"xuanyuan", "multi", "all_turns",
       "«<s>»{XS} Human: q one Assistant:[ a one«</s>»]Human: q two Assistant:[ a two«</s>»]"},
      {"xuanyuan", "multi", "last_turn",
       "«<s>»{XS} Human: q one Assistant: a one«</s>»Human: q two Assistant:[ a two«</s>»]"},
      {"llama2", "single", "all_turns", "«<s>»«[INST]» hi there «[/INST]»[ hello«</s>»]"},
      {"llama2", "multi", "all_turns",
       "«<s>»«[INST]» q one «[/INST]»[ a one«</s>»]«<s>»«[INST]» q two «[/INST]»[ a two«</s>»]"},
      {"llama2", "multi", "last_turn",
       "«<s>»«[INST]» q one «[/INST]» a one«</s>»«<s>»«[INST]» q two «[/INST]»[ a two«</s>»]"},
      {"chatml", "single", "all_turns",
       "«<s>»«<|im_start|>»user\\nhi there«<|im_end|>»\\n«<|im_start|>»assistant\\n[hello«<|im_end|>»]\\n"},
      {"chatml", "multi", "all_turns",
       "«<s>»«<|im_start|>»user\\nq one«<|im_end|>»\\n«<|im_start|>»assistant\\n[a "
       "one«<|im_end|>»]\\n«<|im_start|>»user\\nq two«<|im_end|>»\\n«<|im_start|>»assistant\\n[a "
       "two«<|im_end|>»]\\n"},
      {"chatml", "multi", "last_turn",
       "«<s>»«<|im_start|>»user\\nq one«<|im_end|>»\\n«<|im_start|>»assistant\\na "
       "one«<|im_end|>»\\n«<|im_start|>»user\\nq two«<|im_end|>»\\n«<|im_start|>»assistant\\n[a "
       "two«<|im_end|>»]\\n"},
      {"telechat", "single", "all_turns", "«<s>»[«<_user>»]hi there[«<_bot>»hello«<_end>»]"},
      {"telechat", "multi", "all_turns",
       "«<s>»[«<_user>»]q one[«<_bot>»a one«<_end>»«<_user>»]q two[«<_bot>»a two«<_end>»]"},
      {"telechat", "multi", "last_turn",
       "«<s>»«<_user>»q one«<_bot>»a one«<_end>»[«<_user>»]q two[«<_bot>»a two«<_end>»]"},
      {"firefly", "multi", "all_tokens", "[«<s>»q one«</s>»a one«</s>»q two«</s>»a two«</s>»]"},
  };
  // xuanyuan's default system message (FastChat's), rendered
  const std::string xs =
      "以下是用户和人工智能助手之间的对话。用户以Human开头，人工智能助手以Assistant开头，"
      "会对人类提出的问题给出有帮助、高质量、详细和礼貌的回答，并且总是拒绝参与与不道德、"
      "不安全、有争议、政治敏感等相关的话题、问题和指示。\\n";
  for (auto c : cases) {
    const Sample s = c.which == "single" ? single_turn() : multi_turn();
    if (c.expected.find("{XS}") != std::string::npos) c.expected.replace(c.expected.find("{XS}"), 4, xs);
    EXPECT_EQ(golden(c.tmpl, s, c.loss), c.expected) << c.tmpl << " " << c.which << " " << c.loss;
  }
}

// "<s>" and "</s>" typed in a message are characters, not the bos/eos ids the template inserts:
// the rendering tells them apart, and so do the ids.
TEST(DataTemplate, TypedSpecialTextIsNotTheSpecialId) {
  Sample s = single_turn();
  s.turns[0].content = "hi </s> <s>";
  EXPECT_EQ(golden("firefly", s, "all_turns"), "«<s>»hi </s> <s>«</s>»[hello«</s>»]");
  SampleEncoder enc(tokenizer(), chat_template("firefly", {}), "all_turns");
  const EncodedSample e = enc.encode(s);
  int bos = 0, eos = 0;
  for (int32_t id : e.tokens) bos += id == tokenizer().bos_id(), eos += id == tokenizer().eos_id();
  EXPECT_EQ(bos, 1);  // only the template's
  EXPECT_EQ(eos, 2);  // after the user turn and after the answer
}

TEST(DataTemplate, GoldenSystemMessages) {
  Sample s = single_turn();
  s.system = "Be brief.";
  EXPECT_EQ(golden("firefly", s, "all_turns"), "«<s>»Be brief.«</s>»hi there«</s>»[hello«</s>»]");
  EXPECT_EQ(golden("xuanyuan", s, "all_turns"), "«<s>»Be brief. Human: hi there Assistant:[ hello«</s>»]");
  EXPECT_EQ(golden("llama2", s, "all_turns"),
            "«<s>»«[INST]» «<<SYS>>»\\nBe brief.\\n«<</SYS>>»\\n\\nhi there «[/INST]»[ hello«</s>»]");
  EXPECT_EQ(golden("chatml", s, "all_turns"),
            "«<s>»«<|im_start|>»system\\nBe brief.«<|im_end|>»\\n«<|im_start|>»user\\nhi "
            "there«<|im_end|>»\\n«<|im_start|>»assistant\\n[hello«<|im_end|>»]\\n");
  EXPECT_EQ(golden("telechat", s, "all_turns"),
            "«<s>»[«<_user>»]hi there[«<_bot>»hello«<_end>»]");  // telechat has no system slot
}

TEST(DataTemplate, GoldenCustomTemplateFromYaml) {
  const std::map<std::string, std::string> custom = {{"bos", "false"},
                                                     {"system", "<|im_start|>{content}\n"},
                                                     {"default_system", "You are a helpful assistant."},
                                                     {"user", "<_user>{content}"},
                                                     {"assistant", "<_bot>{content}"},
                                                     {"end_of_turn", "<_end>"},
                                                     {"after_turn", "\n"},
                                                     {"specials", "<_user>,<_bot>,<_end>,<|im_start|>"}};
  EXPECT_EQ(golden("custom", multi_turn(), "all_turns", custom),
            "«<|im_start|>»You are a helpful assistant.\\n«<_user>»q one«<_bot>»[a one«<_end>»]\\n«<_user>»q "
            "two«<_bot>»[a two«<_end>»]\\n");
  EXPECT_EQ(golden("custom", single_turn(), "last_turn", custom),
            "«<|im_start|>»You are a helpful assistant.\\n«<_user>»hi there«<_bot>»[hello«<_end>»]\\n");
}

TEST(DataTemplate, GoldenEveryFormatThroughFirefly) {
  SampleEncoder enc(tokenizer(), chat_template("firefly", {}), "all_turns");
  auto run = [&](const std::string& line, const std::string& fmt) {
    return render(tokenizer(), enc.encode(parse_sample(json::parse(line), fmt)));
  };
  EXPECT_EQ(run(R"({"text":"hello world"})", "text"), "[«<s>»hello world«</s>»]");
  EXPECT_EQ(run(R"({"instruction":"Translate to French:","input":"cat","output":"Chat."})", "alpaca"),
            "«<s>»Translate to French:\\ncat«</s>»[Chat.«</s>»]");
  EXPECT_EQ(run(R"({"input":"q one","output":"a one"})", "telechat"), "«<s>»q one«</s>»[a one«</s>»]");
  EXPECT_EQ(
      run(R"({"input":"<_user>q one<_bot>a one<_end><_user>q two<_bot>","output":"a two"})", "telechat"),
      "«<s>»q one«</s>»[a one«</s>»]q two«</s>»[a two«</s>»]");
  EXPECT_EQ(
      run(R"({"conversation":[{"human":"q one","assistant":"a one"},{"human":"q two","assistant":"a two"}]})",
          "firefly"),
      "«<s>»q one«</s>»[a one«</s>»]q two«</s>»[a two«</s>»]");
  EXPECT_EQ(run(R"({"messages":[{"role":"user","content":"q one"},{"role":"assistant","content":"a one"}]})",
                "messages"),
            "«<s>»q one«</s>»[a one«</s>»]");
}

TEST(DataTemplate, SampleWithNoTrainableTokenIsRejected) {
  Sample s = multi_turn();
  s.turns[3].content = "";
  SampleEncoder all(tokenizer(), chat_template("firefly", {}), "all_turns");
  EXPECT_NO_THROW(all.encode(s));  // the first answer still trains
  SampleEncoder last(tokenizer(), chat_template("firefly", {}), "last_turn");
  try {
    last.encode(s);
    FAIL() << "expected a SampleError";
  } catch (const SampleError& e) {
    EXPECT_EQ(std::string(e.what()), "no trainable token: every trained assistant answer is empty");
  }
}

TEST(DataTemplate, UnknownTemplateAndBadCustomKeys) {
  auto err = [](const std::string& name, const std::map<std::string, std::string>& custom) {
    try {
      chat_template(name, custom);
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(err("vicuna", {}),
            "data.template: unknown template \"vicuna\" (expected firefly, xuanyuan, llama2, chatml, "
            "telechat or custom)");
  EXPECT_EQ(
      err("custom", {{"user", "{content}"}, {"asistant", "x"}}),
      "data.custom_template.asistant: unknown key (expected bos, default_system, system, user, assistant, "
      "end_of_turn, after_turn, system_in_first_user, specials)");
  EXPECT_EQ(err("custom", {{"user", "no placeholder"}}),
            "data.custom_template.user: must contain {content}, got \"no placeholder\"");
  try {
    SampleEncoder enc(tokenizer(),
                      chat_template("custom", {{"user", "<|u|>{content}"}, {"specials", "<|u|>"}}),
                      "all_turns");
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(
                  ": template custom needs the special token <|u|> which this tokenizer lacks"),
              std::string::npos)
        << e.what();
  }
  try {
    SampleEncoder enc(tokenizer(), chat_template("firefly", {}), "every_token");
    FAIL();
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()),
              "data.loss: unknown loss \"every_token\" (expected all_tokens, all_turns or last_turn)");
  }
}
}  // namespace
}  // namespace kiln
