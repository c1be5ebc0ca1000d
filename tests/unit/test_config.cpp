// Config: every class of mistake gets a message naming the file:line (or --set) and the key.
#include <gtest/gtest.h>

#include <string>

#include "trainer/config.h"
#include "base/error.h"

namespace kiln {
namespace {

std::string error_of(const std::string& yaml, const std::vector<std::string>& sets = {}) {
  try {
    parse_config(yaml, "cfg.yaml", sets);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, DefaultsAndValues) {
  Config c = parse_config(
      "model:\n  hidden_size: 32\n  num_heads: 4\n  num_kv_heads: 2\n"
      "train:\n  lr: 1e-3\n  steps: 7\n  betas: [0.8, 0.9]\n",
      "cfg.yaml");
  EXPECT_EQ(c.model.hidden_size, 32);
  EXPECT_EQ(c.model.kv_heads(), 2);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-3);
  EXPECT_EQ(c.train.steps, 7);
  EXPECT_DOUBLE_EQ(c.train.betas[0], 0.8);
  EXPECT_EQ(c.train.schedule, LrSchedule::cosine);  // default
}

TEST(Config, UnknownKeyNamesFileLineAndClosestKey) {
  std::string e = error_of("train:\n  steps: 3\n  lerning_rate: 0.1\n");
  EXPECT_NE(e.find("cfg.yaml:3"), std::string::npos) << e;
  EXPECT_NE(e.find("train.lerning_rate"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown key"), std::string::npos) << e;
  e = error_of("train:\n  lrr: 0.1\n");
  EXPECT_NE(e.find("did you mean 'train.lr'"), std::string::npos) << e;
  e = error_of("trian:\n  lr: 0.1\n");
  EXPECT_NE(e.find("cfg.yaml:1"), std::string::npos) << e;
}

// Names from Hugging Face, DeepSpeed and Megatron configs are suggested as kiln's keys, each
// with the exact message (a sample from every family; the line is the key's own).
TEST(Config, ForeignKeyNamesSuggestKilnKeys) {
  const std::pair<const char*, const char*> cases[] = {
      {"train.learning_rate", "train.lr"},
      {"train.max_steps", "train.steps"},
      {"train.train_iters", "train.steps"},
      {"train.lr_decay_style", "train.schedule"},
      {"train.max_grad_norm", "train.grad_clip"},
      {"train.per_device_train_batch_size", "train.micro_batch_size"},
      {"parallel.zero_stage", "parallel.zero"},
      {"parallel.tensor_model_parallel_size", "parallel.tp"},
      {"model.num_hidden_layers", "model.num_layers"},
      {"model.max_position_embeddings", "model.max_seq_len"},
      {"data.max_seq_length", "data.seq_len"}};
  for (const auto& [foreign, ours] : cases) {
    const std::string f = foreign, section = f.substr(0, f.find('.')), key = f.substr(f.find('.') + 1);
    const std::string e = error_of(section + ":\n  " + key + ": 1\n");
    EXPECT_NE(e.find(std::string("cfg.yaml:2: ") + foreign + ": unknown key; did you mean '" + ours + "'?"),
              std::string::npos)
        << e;
  }
}

TEST(Config, WrongTypeNamesKey) {
  std::string e = error_of("train:\n  steps: many\n");
  EXPECT_NE(e.find("cfg.yaml:2: train.steps: expected an integer, got 'many'"), std::string::npos) << e;
  e = error_of("model:\n  tie_embeddings: maybe\n");
  EXPECT_NE(e.find("model.tie_embeddings: expected true or false"), std::string::npos) << e;
  e = error_of("train:\n  lr: [1, 2]\n");
  EXPECT_NE(e.find("train.lr: expected a number, got 'a list'"), std::string::npos) << e;
}

TEST(Config, OutOfRangeNamesValidRange) {
  std::string e = error_of("parallel:\n  zero: 4\n");
  EXPECT_NE(e.find("cfg.yaml:2: parallel.zero: 4 is out of range; valid: 0 .. 3"), std::string::npos) << e;
  e = error_of("train:\n  lr: 0\n");
  EXPECT_NE(e.find("train.lr: 0 is out of range; valid: > 0"), std::string::npos) << e;
  e = error_of("train:\n  schedule: cosin\n");
  EXPECT_NE(e.find("train.schedule: 'cosin' is not one of cosine | linear | constant"), std::string::npos)
      << e;
}

TEST(Config, SetOverridesAreTypedAndChecked) {
  Config c = parse_config("train:\n  steps: 3\n", "cfg.yaml", {"train.steps=40", "parallel.zero=2"});
  EXPECT_EQ(c.train.steps, 40);
  EXPECT_EQ(c.parallel.zero, 2);
  std::string e = error_of("", {"train.stepz=4"});
  EXPECT_NE(e.find("--set train.stepz: unknown key; did you mean 'train.steps'?"), std::string::npos) << e;
  e = error_of("", {"train.steps=x"});
  EXPECT_NE(e.find("--set train.steps: expected an integer"), std::string::npos) << e;
  e = error_of("", {"nonsense"});
  EXPECT_NE(e.find("expected key.path=value"), std::string::npos) << e;
}

TEST(Config, CrossKeyAndLayoutChecks) {
  EXPECT_NE(error_of("model:\n  hidden_size: 30\n  num_heads: 4\n").find("divisible by model.num_heads"),
            std::string::npos);
  EXPECT_NE(error_of("model:\n  num_heads: 4\n  num_kv_heads: 3\n").find("model.num_kv_heads"),
            std::string::npos);
  EXPECT_NE(error_of("data:\n  seq_len: 1000\nmodel:\n  max_seq_len: 512\n").find("data.seq_len"),
            std::string::npos);
  Config c = parse_config("model:\n  num_layers: 3\n", "cfg.yaml", {"parallel.pp=2"});
  try {
    validate_layout(c, 2);
    FAIL() << "layers % pp accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("model.num_layers (3) must be divisible"), std::string::npos);
  }
  Config d = parse_config("train:\n  micro_batch_size: 2\n  global_batch_size: 6\n", "cfg.yaml");
  EXPECT_EQ(accumulation_steps(d, 1), 3);
  try {
    validate_layout(d, 2);
    FAIL() << "global batch not divisible by micro*dp accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("train.global_batch_size (6)"), std::string::npos);
  }
  validate_layout(d, 3);  // dp 3: 6 = 2 x 3, one micro-batch each
  EXPECT_EQ(accumulation_steps(d, 3), 1);
}

TEST(Config, InvalidYamlNamesLine) {
  std::string e = error_of("train:\n  steps: [1, 2\n");
  EXPECT_NE(e.find("cfg.yaml:"), std::string::npos) << e;
  EXPECT_NE(e.find("invalid YAML"), std::string::npos) << e;
}

TEST(Config, ResolvedYamlRoundTrips) {
  Config c = parse_config("model:\n  hidden_size: 48\n  num_heads: 6\ntrain:\n  lr: 0.002\n", "cfg.yaml",
                          {"data.schedule=[{step: 0, weights: {a: 1}}, {step: 10, weights: {a: 2}}]"});
  std::string y = to_yaml(c);
  Config back = parse_config(y, "resolved.yaml");
  EXPECT_EQ(back.model.hidden_size, 48);
  EXPECT_DOUBLE_EQ(back.train.lr, 0.002);
  ASSERT_EQ(back.data.schedule.size(), 2u);
  EXPECT_DOUBLE_EQ(back.data.schedule[1].weights["a"], 2.0);
  EXPECT_EQ(to_yaml(back), y);
  EXPECT_NE(describe_keys().find("train.lr"), std::string::npos);
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

TEST(Config, HfInitTakesShapeFromConfigJsonUnlessGiven) {
  const std::string dir = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/llama_linear";
  Config c = parse_config("model:\n  init_from: hf:" + dir + "\n  max_seq_len: 4096\n", "cfg.yaml");
  EXPECT_EQ(c.model.vocab_size, 96);
  EXPECT_EQ(c.model.hidden_size, 64);
  EXPECT_EQ(c.model.num_layers, 3);
  EXPECT_EQ(c.model.kv_heads(), 2);
  EXPECT_EQ(c.model.rope_scaling.type, RopeType::linear);
  EXPECT_EQ(c.model.max_seq_len, 4096);  // written in the YAML: kept
}

}  // namespace
}  // namespace kiln
