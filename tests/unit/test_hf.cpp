// Hugging Face import/export: config.json parsing (every rope type, GQA, tied, v4 and v5
// layouts, Baichuan), weight loading (single file, shards, W_pack, dtype conversion) with its
// errors, save_hf round trips, and parity with transformers: kiln::Llama loaded from the
// fixtures gives transformers' logits, loss and gradients (tests/fixtures/hf/make_fixture.py).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "models/hf.h"
#include "models/llama.h"
#include "models/safetensors.h"
#include "test_data_util.h"
#include "base/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kFixtures = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/";

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
}

void expect_user_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const UserError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg << "\nexpected: " << needle;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// A module tree whose named_parameters() are exactly the given dotted names (a stand-in for a
// model, so loading is tested without depending on models/llama.cpp).
std::shared_ptr<torch::nn::Module> module_with(
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& params,
    torch::Dtype dtype = torch::kFloat) {
  auto root = std::make_shared<torch::nn::Module>();
  for (const auto& [name, shape] : params) {
    torch::nn::Module* m = root.get();
    std::stringstream ss(name);
    std::string part, next;
    std::getline(ss, part, '.');
    while (std::getline(ss, next, '.')) {
      auto children = m->named_children();
      if (!children.contains(part)) m->register_module(part, std::make_shared<torch::nn::Module>());
      m = m->named_children()[part].get();
      part = next;
    }
    m->register_parameter(part, torch::full(shape, -7.0, dtype));
  }
  return root;
}

class Hf : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = test::temp_root() + "/kiln_hf_XXXXXX";
    dir_ = mkdtemp(tmpl.data());
  }
  // Not fs::remove_all: libtorch.so exports a broken copy of it.
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  // A directory holding only config.json with the given content.
  std::string config_dir(const json& cfg) {
    std::string d = dir_ + "/cfg" + std::to_string(n_++);
    fs::create_directories(d);
    write_text(d + "/config.json", cfg.dump());
    return d;
  }
  static json llama_json() {
    return json{{"model_type", "llama"},      {"vocab_size", 32000},
                {"hidden_size", 4096},        {"num_hidden_layers", 32},
                {"num_attention_heads", 32},  {"num_key_value_heads", 8},
                {"intermediate_size", 11008}, {"max_position_embeddings", 4096},
                {"rms_norm_eps", 1e-5},       {"rope_theta", 10000.0},
                {"rope_scaling", nullptr},    {"tie_word_embeddings", false}};
  }
  std::string dir_;
  int n_ = 0;
};

// --- config.json ----------------------------------------------------------------------------

TEST_F(Hf, ReadsLinearGqaUntiedConfigWrittenByTransformers) {
  ModelConfig c = read_hf_config(kFixtures + "llama_linear");
  EXPECT_EQ(c.arch, Arch::llama);
  EXPECT_EQ(c.vocab_size, 96);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.ffn_hidden_size, 160);
  EXPECT_EQ(c.max_seq_len, 64);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeType::linear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_EQ(c.position, Position::rope);
  EXPECT_EQ(c.init_from, "none");
}

TEST_F(Hf, ReadsLlama3Config) {
  ModelConfig c = read_hf_config(kFixtures + "llama_llama3");
  EXPECT_EQ(c.rope_scaling.type, RopeType::llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_seq_len, 512);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.max_seq_len, 2048);
}

TEST_F(Hf, ReadsDynamicTiedConfig) {
  ModelConfig c = read_hf_config(kFixtures + "llama_dynamic_tied");
  EXPECT_EQ(c.rope_scaling.type, RopeType::dynamic);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_EQ(c.max_seq_len, 16);
  EXPECT_EQ(c.rope_scaling.original_max_seq_len, 16);  // transformers scales against max_position_embeddings
  EXPECT_TRUE(c.tie_embeddings);
}

TEST_F(Hf, ReadsTransformersV4Layout) {
  json j = llama_json();
  j.erase("num_key_value_heads");
  j.erase("rms_norm_eps");
  j["rope_theta"] = 1e6;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};  // "type", not "rope_type"
  j["tie_word_embeddings"] = true;
  ModelConfig c = read_hf_config(config_dir(j));
  EXPECT_EQ(c.num_kv_heads, 32);       // absent = multi-head attention
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-6);  // transformers' default
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, RopeType::linear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_TRUE(c.tie_embeddings);

  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(read_hf_config(config_dir(j)).rope_scaling.type, RopeType::none);
  j.erase("rope_scaling");
  EXPECT_EQ(read_hf_config(config_dir(j)).rope_scaling.type, RopeType::none);
}

TEST_F(Hf, ReadsBaichuanConfigs) {
  // Baichuan-7B: RoPE, max_position_embeddings.
  json b7 = {{"model_type", "baichuan"},        {"vocab_size", 64000},       {"hidden_size", 4096},
             {"num_hidden_layers", 32},         {"num_attention_heads", 32}, {"intermediate_size", 11008},
             {"max_position_embeddings", 4096}, {"rms_norm_eps", 1e-6},      {"hidden_act", "silu"}};
  ModelConfig c7 = read_hf_config(config_dir(b7));
  EXPECT_EQ(c7.arch, Arch::baichuan);
  EXPECT_EQ(c7.position, Position::rope);
  EXPECT_EQ(c7.kv_heads(), 32);
  // Baichuan-13B: ALiBi, context in model_max_length.
  json b13 = {{"model_type", "baichuan"}, {"vocab_size", 64000},       {"hidden_size", 5120},
              {"num_hidden_layers", 40},  {"num_attention_heads", 40}, {"intermediate_size", 13696},
              {"model_max_length", 4096}, {"rms_norm_eps", 1e-6}};
  ModelConfig c13 = read_hf_config(config_dir(b13));
  EXPECT_EQ(c13.position, Position::alibi);
  EXPECT_EQ(c13.max_seq_len, 4096);
  EXPECT_EQ(c13.ffn_hidden_size, 13696);
}

TEST_F(Hf, ConfigErrorsNameTheFileAndKey) {
  json j = llama_json();
  j.erase("hidden_size");
  std::string d = config_dir(j);
  expect_user_error([&] { read_hf_config(d); }, d + "/config.json: missing required key 'hidden_size'");

  j = llama_json();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  d = config_dir(j);
  expect_user_error([&] { read_hf_config(d); },
                    d + "/config.json: rope_scaling.rope_type 'yarn' is not supported (valid: default, "
                        "linear, dynamic, llama3)");

  j = llama_json();
  j["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 10000.0}};
  d = config_dir(j);
  expect_user_error([&] { read_hf_config(d); }, "missing required key 'rope_parameters.factor'");

  j = llama_json();
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  expect_user_error([&] { read_hf_config(config_dir(j)); },
                    "missing required key 'rope_scaling.low_freq_factor'");

  j = llama_json();
  j["model_type"] = "mistral";
  expect_user_error([&] { read_hf_config(config_dir(j)); },
                    "model_type 'mistral' is not supported (valid: llama, baichuan)");
  j = llama_json();
  j["hidden_act"] = "gelu";
  expect_user_error([&] { read_hf_config(config_dir(j)); },
                    "hidden_act 'gelu' is not supported (valid: silu)");
  j = llama_json();
  j["head_dim"] = 256;
  expect_user_error([&] { read_hf_config(config_dir(j)); },
                    "head_dim 256 differs from hidden_size / num_attention_heads = 128");
  j = llama_json();
  j["num_key_value_heads"] = 5;
  expect_user_error([&] { read_hf_config(config_dir(j)); },
                    "num_attention_heads 32 is not divisible by num_key_value_heads 5");
  j = llama_json();
  j["hidden_size"] = "4096";
  expect_user_error([&] { read_hf_config(config_dir(j)); },
                    "key 'hidden_size' must be an integer, not \"4096\"");
  j = llama_json();
  j["attention_bias"] = true;
  expect_user_error([&] { read_hf_config(config_dir(j)); }, "attention_bias true is not supported");

  d = dir_ + "/broken";
  fs::create_directories(d);
  write_text(d + "/config.json", "{\"vocab_size\": 3,");
  expect_user_error([&] { read_hf_config(d); }, d + "/config.json: not valid JSON");
  expect_user_error([&] { read_hf_config(dir_ + "/absent"); }, dir_ + "/absent: not a directory");
}

// --- parameter shapes -----------------------------------------------------------------------

TEST_F(Hf, ParameterShapesMatchTransformersFiles) {
  for (const char* name : {"llama_linear", "llama_dynamic_tied"}) {
    ModelConfig c = read_hf_config(kFixtures + name);
    SafetensorsFile f(kFixtures + name + "/model.safetensors");
    auto shapes = hf_parameter_shapes(c);
    EXPECT_EQ(shapes.size(), f.names().size()) << name;
    int64_t numel = 0;
    for (const auto& [pname, shape] : shapes) {
      EXPECT_EQ(f.info(pname).shape, shape) << pname;
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      numel += n;
    }
    // embed 96*64, per layer q 64*64 + k,v 16*64 + o 64*64 + 3 * 160*64 + 2 * 64, norm 64, head.
    const int64_t layer = 4096 + 2 * 1024 + 4096 + 3 * 10240 + 128;
    EXPECT_EQ(numel, 6144 + 3 * layer + 64 + (c.tie_embeddings ? 0 : 6144)) << name;
  }
}

// --- loading --------------------------------------------------------------------------------

TEST_F(Hf, LoadsEveryTensorFromSingleFileAndShards) {
  ModelConfig c = read_hf_config(kFixtures + "llama_linear");
  SafetensorsFile single(kFixtures + "llama_linear/model.safetensors");
  for (const char* dir : {"llama_linear", "llama_linear_sharded"}) {
    auto model = module_with(hf_parameter_shapes(c));
    load_hf_weights(*model, kFixtures + dir);
    for (const auto& p : model->named_parameters())
      EXPECT_TRUE(torch::equal(p.value(), single.tensor(p.key()))) << dir << " " << p.key();
  }
  HfWeights sharded(kFixtures + "llama_linear_sharded");
  EXPECT_EQ(sharded.source(), kFixtures + "llama_linear_sharded/model.safetensors.index.json");
  EXPECT_EQ(sharded.names().size(), 30u);
  EXPECT_NE(sharded.file_of("lm_head.weight").path(), sharded.file_of("model.embed_tokens.weight").path());
}

TEST_F(Hf, LoadConvertsDtype) {
  ModelConfig c = read_hf_config(kFixtures + "llama_linear");
  auto model = module_with(hf_parameter_shapes(c), torch::kBFloat16);
  load_hf_weights(*model, kFixtures + "llama_linear");
  SafetensorsFile f(kFixtures + "llama_linear/model.safetensors");
  auto p = model->named_parameters()["model.layers.1.mlp.up_proj.weight"];
  EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(p, f.tensor("model.layers.1.mlp.up_proj.weight").to(torch::kBFloat16)));
}

TEST_F(Hf, TiedModelsIgnoreOrLackLmHead) {
  ModelConfig tied = read_hf_config(kFixtures + "llama_dynamic_tied");
  auto model = module_with(hf_parameter_shapes(tied));
  load_hf_weights(*model, kFixtures + "llama_dynamic_tied");  // file has no lm_head
  EXPECT_FALSE(model->named_parameters().contains("lm_head.weight"));
  // A tied model from an untied file: lm_head.weight in the file is not an error.
  ModelConfig c = read_hf_config(kFixtures + "llama_linear");
  c.tie_embeddings = true;
  auto model2 = module_with(hf_parameter_shapes(c));
  load_hf_weights(*model2, kFixtures + "llama_linear");
  SafetensorsFile f(kFixtures + "llama_linear/model.safetensors");
  EXPECT_TRUE(torch::equal(model2->named_parameters()["model.embed_tokens.weight"],
                           f.tensor("model.embed_tokens.weight")));
}

TEST_F(Hf, LoadErrorsNameTensorAndShapes) {
  const std::string dir = kFixtures + "llama_linear";
  ModelConfig c = read_hf_config(dir);
  ModelConfig bigger = c;
  bigger.vocab_size = 100;
  expect_user_error([&] { load_hf_weights(*module_with(hf_parameter_shapes(bigger)), dir); },
                    dir +
                        "/model.safetensors: tensor 'model.embed_tokens.weight': shape [96, 64] in the "
                        "file, the model expects [100, 64]");
  ModelConfig deeper = c;
  deeper.num_layers = 4;
  expect_user_error([&] { load_hf_weights(*module_with(hf_parameter_shapes(deeper)), dir); },
                    dir +
                        "/model.safetensors: tensor 'model.layers.3.self_attn.q_proj.weight' is missing "
                        "(9 missing in all: ");
  ModelConfig shallower = c;
  shallower.num_layers = 2;
  expect_user_error([&] { load_hf_weights(*module_with(hf_parameter_shapes(shallower)), dir); },
                    dir +
                        "/model.safetensors: 9 tensor(s) in the file are not used by the model: "
                        "model.layers.2.");
  // A pipeline stage holding fewer layers loads what it has.
  auto stage = module_with(hf_parameter_shapes(shallower));
  load_hf_weights(*stage, dir, /*partial=*/true);
  SafetensorsFile f(dir + "/model.safetensors");
  EXPECT_TRUE(torch::equal(stage->named_parameters()["model.layers.1.input_layernorm.weight"],
                           f.tensor("model.layers.1.input_layernorm.weight")));
  expect_user_error([&] { load_hf_weights(*stage, dir_); }, dir_ +
                                                                ": has neither model.safetensors nor "
                                                                "model.safetensors.index.json");
}

TEST_F(Hf, BadShardIndexIsRejected) {
  const std::string d = dir_ + "/idx";
  fs::create_directories(d);
  write_safetensors(d + "/a.safetensors", {{"x", torch::ones({2})}});
  write_text(d + "/model.safetensors.index.json",
             R"({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}})");
  expect_user_error(
      [&] { HfWeights w(d); },
      d + "/model.safetensors.index.json: shard 'b.safetensors' (for tensor 'y') does not exist");
  write_text(d + "/model.safetensors.index.json",
             R"({"weight_map": {"x": "a.safetensors", "y": "a.safetensors"}})");
  expect_user_error([&] { HfWeights w(d); },
                    "tensor 'y' is mapped to 'a.safetensors', which does not hold it");
  write_text(d + "/model.safetensors.index.json", R"({"weight_map": {"x": "../a.safetensors"}})");
  expect_user_error([&] { HfWeights w(d); }, "must name a file inside");
  write_text(d + "/model.safetensors.index.json", R"({"metadata": {}})");
  expect_user_error([&] { HfWeights w(d); }, "missing 'weight_map'");
}

TEST_F(Hf, SplitsBaichuanWPack) {
  // One Baichuan layer: W_pack (3h, h) = [q; k; v], h = 4.
  const std::string d = dir_ + "/baichuan";
  fs::create_directories(d);
  at::Tensor pack = torch::arange(48, torch::kFloat).reshape({12, 4});
  write_safetensors(d + "/model.safetensors", {{"model.layers.0.self_attn.W_pack.weight", pack},
                                               {"model.layers.0.self_attn.o_proj.weight", torch::eye(4)}});
  auto model = module_with({{"model.layers.0.self_attn.q_proj.weight", {4, 4}},
                            {"model.layers.0.self_attn.k_proj.weight", {4, 4}},
                            {"model.layers.0.self_attn.v_proj.weight", {4, 4}},
                            {"model.layers.0.self_attn.o_proj.weight", {4, 4}}});
  load_hf_weights(*model, d);
  auto params = model->named_parameters();
  EXPECT_TRUE(torch::equal(params["model.layers.0.self_attn.q_proj.weight"], pack.slice(0, 0, 4)));
  EXPECT_TRUE(torch::equal(params["model.layers.0.self_attn.k_proj.weight"], pack.slice(0, 4, 8)));
  EXPECT_TRUE(torch::equal(params["model.layers.0.self_attn.v_proj.weight"], pack.slice(0, 8, 12)));
  EXPECT_TRUE(torch::equal(params["model.layers.0.self_attn.o_proj.weight"], torch::eye(4)));

  auto wide = module_with({{"model.layers.0.self_attn.q_proj.weight", {4, 5}},
                           {"model.layers.0.self_attn.k_proj.weight", {4, 5}},
                           {"model.layers.0.self_attn.v_proj.weight", {4, 5}},
                           {"model.layers.0.self_attn.o_proj.weight", {4, 4}}});
  expect_user_error([&] { load_hf_weights(*wide, d); },
                    "tensor 'model.layers.0.self_attn.W_pack.weight': shape [12, 4] in the file, the model "
                    "expects [12, 5] (q, k, v stacked)");
}

TEST_F(Hf, Baichuan2NormHeadIsNormalisedAtLoad) {
  const std::string d = dir_ + "/baichuan2";
  fs::create_directories(d);
  torch::manual_seed(3);
  at::Tensor head = torch::randn({125696, 4}) * 3.0;  // Baichuan2's vocabulary, tiny width
  write_safetensors(d + "/model.safetensors", {{"lm_head.weight", head}});
  json cfg = {{"model_type", "baichuan"}, {"vocab_size", 125696}};
  write_text(d + "/config.json", cfg.dump());
  auto model = module_with({{"lm_head.weight", {125696, 4}}});
  load_hf_weights(*model, d);
  at::Tensor w = model->named_parameters()["lm_head.weight"];
  EXPECT_TRUE(torch::allclose(w.norm(2, {1}), torch::ones({125696}), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(w * head.norm(2, {1}, true), head, 1e-5, 1e-5));
  // Baichuan 1 (or any other vocabulary) keeps the raw rows.
  cfg["vocab_size"] = 64000;
  write_text(d + "/config.json", cfg.dump());
  load_hf_weights(*model, d);
  EXPECT_TRUE(torch::equal(model->named_parameters()["lm_head.weight"], head));
}

// --- export ---------------------------------------------------------------------------------

std::vector<std::pair<std::string, at::Tensor>> fixture_tensors(const std::string& dir,
                                                                const ModelConfig& c) {
  HfWeights w(dir);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& [name, shape] : hf_parameter_shapes(c)) named.emplace_back(name, w.tensor(name));
  return named;
}

TEST_F(Hf, SaveRoundTripsSingleAndSharded) {
  for (const char* name : {"llama_linear", "llama_llama3", "llama_dynamic_tied"}) {
    ModelConfig c = read_hf_config(kFixtures + name);
    auto named = fixture_tensors(kFixtures + name, c);
    for (int64_t shard_bytes : {int64_t{5} * 1000 * 1000 * 1000, int64_t{100000}}) {
      const std::string out = dir_ + "/" + name + "_" + std::to_string(shard_bytes);
      save_hf(named, c, out, shard_bytes);
      EXPECT_FALSE(fs::exists(out + ".tmp"));
      const bool sharded = shard_bytes == 100000;
      EXPECT_EQ(fs::exists(out + "/model.safetensors.index.json"), sharded);
      EXPECT_EQ(fs::exists(out + "/model.safetensors"), !sharded);

      ModelConfig back = read_hf_config(out);
      EXPECT_EQ(back.vocab_size, c.vocab_size);
      EXPECT_EQ(back.num_kv_heads, c.num_kv_heads);
      EXPECT_EQ(back.ffn_hidden_size, c.ffn_hidden_size);
      EXPECT_EQ(back.max_seq_len, c.max_seq_len);
      EXPECT_EQ(back.tie_embeddings, c.tie_embeddings);
      EXPECT_DOUBLE_EQ(back.norm_eps, c.norm_eps);
      EXPECT_DOUBLE_EQ(back.rope_theta, c.rope_theta);
      EXPECT_EQ(back.rope_scaling.type, c.rope_scaling.type);
      EXPECT_DOUBLE_EQ(back.rope_scaling.factor, c.rope_scaling.factor);
      EXPECT_EQ(back.rope_scaling.original_max_seq_len, c.rope_scaling.original_max_seq_len);

      HfWeights w(out);
      EXPECT_EQ(w.names().size(), named.size());
      for (const auto& [pname, t] : named) EXPECT_TRUE(torch::equal(w.tensor(pname), t)) << pname;
      if (sharded) {
        json index = json::parse(std::ifstream(out + "/model.safetensors.index.json"));
        int64_t total = 0;
        for (const auto& [pname, t] : named) total += t.numel() * 4;
        EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
        // Every shard but a lone oversized tensor stays within the limit.
        std::set<std::string> files;
        for (const auto& kv : index["weight_map"].items()) files.insert(kv.value().get<std::string>());
        EXPECT_GE(files.size(), 5u);
        EXPECT_EQ(*files.begin(), "model-00001-of-0000" + std::to_string(files.size()) + ".safetensors");
        for (const std::string& f : files) EXPECT_LE(fs::file_size(out + "/" + f), 100000u + 4096u) << f;
      }
      json cfg = json::parse(std::ifstream(out + "/config.json"));
      EXPECT_EQ(cfg["architectures"][0], "LlamaForCausalLM");
      EXPECT_EQ(cfg["torch_dtype"], "float32");
      EXPECT_EQ(SafetensorsFile(w.file_of("model.norm.weight").path()).metadata().at("format"), "pt");
    }
  }
}

TEST_F(Hf, Bf16CheckpointLoadsIntoFp32Model) {
  // Most published checkpoints are bf16: export one, check its config, load it into fp32.
  ModelConfig c = read_hf_config(kFixtures + "llama_linear");
  auto named = fixture_tensors(kFixtures + "llama_linear", c);
  for (auto& kv : named) kv.second = kv.second.to(torch::kBFloat16);
  const std::string out = dir_ + "/bf16";
  save_hf(named, c, out);
  json cfg = json::parse(std::ifstream(out + "/config.json"));
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
  EXPECT_EQ(SafetensorsFile(out + "/model.safetensors").info("lm_head.weight").dtype, "BF16");
  auto model = module_with(hf_parameter_shapes(c));
  load_hf_weights(*model, out);
  auto p = model->named_parameters()["lm_head.weight"];
  EXPECT_EQ(p.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(p, named.back().second.to(torch::kFloat)));
}

TEST_F(Hf, SaveRefusesNonEmptyDirectoryAndAlibi) {
  ModelConfig c = read_hf_config(kFixtures + "llama_linear");
  auto named = fixture_tensors(kFixtures + "llama_linear", c);
  const std::string out = dir_ + "/out";
  fs::create_directories(out);                        // empty: fine
  fs::create_directories(out + ".tmp/stale/deeper");  // an export that died half-way
  write_text(out + ".tmp/stale/deeper/model-00001-of-00002.safetensors", "junk");
  save_hf(named, c, out);
  EXPECT_FALSE(fs::exists(out + ".tmp"));
  EXPECT_FALSE(fs::exists(out + "/stale"));
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  expect_user_error([&] { save_hf(named, c, out); }, out + ": already exists and is not empty");
  c.position = Position::alibi;
  expect_user_error([&] { save_hf(named, c, dir_ + "/alibi"); }, "cannot export an ALiBi model");
  EXPECT_FALSE(fs::exists(dir_ + "/alibi"));
}

// --- parity with transformers ---------------------------------------------------------------

// max |a - b| / max |b|: the error relative to the reference's scale.
double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

Batch fixture_batch(const SafetensorsFile& e, bool packed) {
  Batch b;
  b.input_ids = e.tensor("input_ids").clone();
  b.labels = e.tensor("labels").clone();
  b.position_ids = e.tensor("position_ids").clone();
  b.packed = packed;
  b.loss_tokens = b.labels.ne(kIgnoreIndex).sum().item<int64_t>();
  return b;
}

// Loads the HF directory into kiln::Llama, runs the fixture batch and compares logits, loss and
// every parameter's gradient with what transformers computed.
void expect_parity(const std::string& weights, const std::string& expected, bool packed) {
  SCOPED_TRACE(weights + " vs " + expected);
  ModelConfig c = read_hf_config(weights);
  torch::manual_seed(0);
  Llama model(c);
  load_hf_weights(*model, weights);
  SafetensorsFile e(expected);
  Batch b = fixture_batch(e, packed);
  EXPECT_EQ(b.loss_tokens, packed ? 37 : 40);  // 2 x 23 next tokens minus the -100 labels

  at::Tensor logits = model->forward(b);
  at::Tensor ref = e.tensor("logits");
  ASSERT_EQ(logits.sizes(), ref.sizes());
  EXPECT_LE(rel_err(logits, ref), 1e-4);
  EXPECT_GT(ref.abs().max().item<double>(), 1.0);  // a model that carries signal

  at::Tensor loss = lm_loss_sum(logits, b.labels) / static_cast<double>(b.loss_tokens);
  const double ref_loss = e.tensor("loss").item<double>();
  EXPECT_NEAR(loss.item<double>(), ref_loss, 1e-5 * ref_loss);

  loss.backward();
  int64_t compared = 0;
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    at::Tensor g = e.tensor("grad." + p.key());
    ASSERT_EQ(p.value().grad().sizes(), g.sizes()) << p.key();
    EXPECT_LE(rel_err(p.value().grad(), g), 1e-4) << p.key();
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int64_t>(hf_parameter_shapes(c).size()));
}

TEST_F(Hf, ParityLinearRopeGqaUntied) {
  expect_parity(kFixtures + "llama_linear", kFixtures + "llama_linear/expected.safetensors", false);
}

TEST_F(Hf, ParityLlama3Rope) {
  expect_parity(kFixtures + "llama_llama3", kFixtures + "llama_llama3/expected.safetensors", false);
}

TEST_F(Hf, ParityDynamicRopeTied) {
  expect_parity(kFixtures + "llama_dynamic_tied", kFixtures + "llama_dynamic_tied/expected.safetensors",
                false);
}

TEST_F(Hf, ParityShardedCheckpoint) {
  expect_parity(kFixtures + "llama_linear_sharded", kFixtures + "llama_linear/expected.safetensors", false);
}

TEST_F(Hf, ParityPackedDocuments) {
  expect_parity(kFixtures + "llama_linear", kFixtures + "llama_linear/expected_packed.safetensors", true);
}

// The fixtures exercise what they claim: without its rope scaling (or, for the packed batch,
// without document masking) each model is far outside the parity tolerance.
TEST_F(Hf, FixturesDependOnRopeScalingAndPacking) {
  torch::NoGradGuard no_grad;
  for (const char* name : {"llama_linear", "llama_llama3", "llama_dynamic_tied"}) {
    ModelConfig c = read_hf_config(kFixtures + name);
    c.rope_scaling = RopeScaling{};
    Llama model(c);
    load_hf_weights(*model, kFixtures + name);
    SafetensorsFile e(kFixtures + name + "/expected.safetensors");
    EXPECT_GT(rel_err(model->forward(fixture_batch(e, false)), e.tensor("logits")), 1e-3) << name;
  }
  ModelConfig c = read_hf_config(kFixtures + "llama_linear");
  Llama model(c);
  load_hf_weights(*model, kFixtures + "llama_linear");
  SafetensorsFile e(kFixtures + "llama_linear/expected_packed.safetensors");
  EXPECT_GT(rel_err(model->forward(fixture_batch(e, /*packed=*/false)), e.tensor("logits")), 1e-3);
}

TEST_F(Hf, SaveFromModelReloadsIdentically) {
  ModelConfig c = read_hf_config(kFixtures + "llama_llama3");
  Llama model(c);
  load_hf_weights(*model, kFixtures + "llama_llama3");
  auto params = model->named_parameters();
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& [name, shape] : hf_parameter_shapes(c)) named.emplace_back(name, params[name]);
  const std::string out = dir_ + "/export";
  save_hf(named, c, out, /*max_shard_bytes=*/200000);

  torch::manual_seed(1);
  Llama again(read_hf_config(out));
  load_hf_weights(*again, out);
  for (const auto& p : again->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), params[p.key()])) << p.key();
  SafetensorsFile e(kFixtures + "llama_llama3/expected.safetensors");
  Batch b = fixture_batch(e, false);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(again->forward(b), model->forward(b)));
}

}  // namespace
}  // namespace kiln
