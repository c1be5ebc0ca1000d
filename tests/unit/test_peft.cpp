// PEFT adapter directories: kiln reads PEFT's own save_pretrained output (a DoRA + rsLoRA adapter
// on every linear layer of the HF fixture, tests/fixtures/peft/make_fixture.py) and computes
// PEFT's module outputs with it; kiln writes PEFT's names, shapes and config, reads them back, and
// names the file and key of every malformed adapter. tests/e2e/test_peft_adapter.sh loads what
// this writes with PeftModel.from_pretrained (KILN_PEFT_OUT names the directory to write).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "models/lora.h"
#include "models/peft.h"
#include "models/safetensors.h"
#include "base/error.h"
#include "test_data_util.h"

namespace kiln {
namespace {

const std::string kDir = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/";
const std::string kPeftDir = kDir + "peft/llama_linear_dora";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}


// The base model's projections: module path -> weight (out, in), from the HF fixture.
std::map<std::string, at::Tensor> base_projections() {
  SafetensorsFile f(kDir + "hf/llama_linear/model.safetensors");
  std::map<std::string, at::Tensor> out;
  for (const std::string& n : f.names())
    if (ends_with(n, "_proj.weight")) out[n.substr(0, n.size() - 7)] = f.tensor(n);
  return out;
}

NamedAdapters make_adapters(const PeftConfig& c, const std::map<std::string, at::Tensor>& base) {
  NamedAdapters out;
  for (const auto& [module, w] : base)
    out.emplace_back(module, LoraAdapter(LoraOptions(w.size(1), w.size(0), c.r)
                                             .alpha(c.alpha)
                                             .rslora(c.rslora)
                                             .dora(c.dora)
                                             .name(module)));
  return out;
}

void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what, double tol = 1e-5) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  double rel = ((a - b).norm() / b.norm()).item<double>();
  EXPECT_LE(rel, tol) << what << ": relative error " << rel;
}

TEST(Peft, ReadsPeftsOwnAdapterAndComputesItsOutputs) {
  PeftAdapter src = read_peft_adapter(kPeftDir);
  EXPECT_EQ(src.config.r, 2);
  EXPECT_DOUBLE_EQ(src.config.alpha, 5);
  EXPECT_TRUE(src.config.rslora);
  EXPECT_TRUE(src.config.dora);
  EXPECT_EQ(src.config.target_modules.size(), 7u);
  auto base = base_projections();
  ASSERT_EQ(base.size(), 21u);  // 3 layers x 7 projections
  NamedAdapters adapters = make_adapters(src.config, base);
  load_peft_adapter(src, adapters);
  SafetensorsFile expected(kDir + "peft/llama_linear_dora_expected.safetensors");
  for (auto& [module, a] : adapters) {
    a->eval();
    at::Tensor x = expected.tensor(module + ".x"), w = base.at(module);
    at::Tensor y = a->forward(x, at::linear(x, w), {w, nullptr, {}});
    expect_close(y, expected.tensor(module + ".y"), module);
  }
}

// Writes kiln-made adapters (B and the magnitude moved off their init) with PEFT's names; when
// KILN_PEFT_OUT is set (by tests/e2e/test_peft_adapter.sh) into that directory, together with
// kiln_expected.safetensors: per module, an input and kiln's output for PEFT to reproduce.
TEST(Peft, WritesPeftsNamesShapesAndConfig) {
  const char* env = std::getenv("KILN_PEFT_OUT");
  test::TempDir tmp;  // $TMPDIR, removed at the end
  const std::string dir = env ? std::string(env) : tmp / "adapter";
  PeftConfig cfg;
  cfg.r = 4, cfg.alpha = 8, cfg.rslora = false, cfg.dora = true, cfg.dropout = 0.05;
  cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  cfg.base_model = "tests/fixtures/hf/llama_linear";
  auto base = base_projections();
  NamedAdapters adapters = make_adapters(cfg, base);
  at::Generator gen = at::detail::createCPUGenerator(17);
  std::vector<std::pair<std::string, at::Tensor>> expected;
  for (auto& [module, a] : adapters) {
    const at::Tensor& w = base.at(module);
    {
      torch::NoGradGuard no_grad;
      a->lora_B.normal_(0, 0.2, gen);
    }
    a->init_magnitude({w, nullptr, {}});
    {
      torch::NoGradGuard no_grad;
      a->lora_magnitude_vector.mul_(1.1);
    }
    a->eval();
    at::Tensor x = torch::empty({2, 3, w.size(1)}).normal_(0, 1, gen);
    expected.emplace_back(module + ".x", x);
    expected.emplace_back(module + ".y", a->forward(x, at::linear(x, w), {w, nullptr, {}}).detach());
  }
  write_peft_adapter(dir, cfg, adapters);
  write_safetensors(dir + "/kiln_expected.safetensors", expected);

  // The names and shapes PEFT itself saves for this model (its fixture is DoRA on all linears).
  SafetensorsFile ours(dir + "/adapter_model.safetensors"), peft(kPeftDir + "/adapter_model.safetensors");
  std::vector<std::string> a = ours.names(), b = peft.names();
  EXPECT_EQ(std::set<std::string>(a.begin(), a.end()), std::set<std::string>(b.begin(), b.end()));
  for (const std::string& n : b) {
    if (!ours.contains(n)) continue;
    std::vector<int64_t> shape = peft.info(n).shape;
    if (ends_with(n, "lora_A.weight")) shape[0] = 4;  // r 4 here, 2 in PEFT's fixture
    if (ends_with(n, "lora_B.weight")) shape[1] = 4;
    EXPECT_EQ(ours.info(n).shape, shape) << n;
    EXPECT_EQ(ours.info(n).dtype, "F32") << n;
  }
  EXPECT_EQ(ours.metadata().at("format"), "pt");
  std::ifstream in(dir + "/adapter_config.json");
  nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["r"], 4);
  EXPECT_EQ(j["lora_alpha"], 8.0);
  EXPECT_EQ(j["use_dora"], true);
  EXPECT_EQ(j["use_rslora"], false);
  EXPECT_EQ(j["target_modules"].size(), 7u);

  // Read back into fresh adapters: the same tensors.
  PeftAdapter back = read_peft_adapter(dir);
  EXPECT_DOUBLE_EQ(back.config.dropout, 0.05);
  NamedAdapters fresh = make_adapters(back.config, base);
  load_peft_adapter(back, fresh);
  for (size_t i = 0; i < fresh.size(); ++i) {
    EXPECT_TRUE(torch::equal(fresh[i].second->lora_A, adapters[i].second->lora_A));
    EXPECT_TRUE(torch::equal(fresh[i].second->lora_B, adapters[i].second->lora_B));
    EXPECT_TRUE(
        torch::equal(fresh[i].second->lora_magnitude_vector, adapters[i].second->lora_magnitude_vector));
  }
}

// Runs fn, expects a one-line UserError that starts with `path` and contains `needle`.
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

TEST(Peft, BadAdaptersNameTheFileAndKey) {
  test::TempDir tmp;
  const std::string dir = tmp.str();
  auto base = base_projections();
  PeftConfig cfg;
  cfg.r = 2, cfg.alpha = 4, cfg.target_modules = {"q_proj"};
  NamedAdapters q;
  for (const auto& [module, w] : base)
    if (ends_with(module, "q_proj"))
      q.emplace_back(module, LoraAdapter(LoraOptions(w.size(1), w.size(0), 2).alpha(4).name(module)));
  write_peft_adapter(dir, cfg, q);
  const std::string config = dir + "/adapter_config.json", weights = dir + "/adapter_model.safetensors";
  PeftAdapter good = read_peft_adapter(dir);

  // Config disagreements with the model's lora settings.
  NamedAdapters r4{{q[0].first, LoraAdapter(LoraOptions(64, 64, 4).alpha(4))}};
  expect_user_error([&] { load_peft_adapter(good, r4); }, config, "r is 2 but lora.rank is 4");
  NamedAdapters dora{{q[0].first, LoraAdapter(LoraOptions(64, 64, 2).alpha(4).dora(true))}};
  expect_user_error([&] { load_peft_adapter(good, dora); }, config,
                    "use_dora is false but lora.dora is true");
  // Modules: one the file lacks, one the model lacks, a wrong shape.
  NamedAdapters more = q;
  more.emplace_back("model.layers.0.self_attn.k_proj", LoraAdapter(LoraOptions(64, 16, 2).alpha(4)));
  expect_user_error([&] { load_peft_adapter(good, more); }, weights,
                    "no tensors for module 'model.layers.0.self_attn.k_proj'");
  NamedAdapters fewer(q.begin(), q.begin() + 1);
  expect_user_error([&] { load_peft_adapter(good, fewer); }, weights,
                    "module 'model.layers.1.self_attn.q_proj' has no adapter");
  NamedAdapters wide = q;
  wide[0].second = LoraAdapter(LoraOptions(32, 64, 2).alpha(4));
  expect_user_error([&] { load_peft_adapter(good, wide); }, weights,
                    "tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': shape [2, 64]; "
                    "valid: [2, 32]");

  // Malformed config files.
  auto rewrite = [&](const std::function<void(nlohmann::json&)>& edit) {
    std::ifstream in(config);
    nlohmann::json j = nlohmann::json::parse(in);
    edit(j);
    std::ofstream(config) << j.dump();
  };
  nlohmann::json original;
  {
    std::ifstream in(config);
    original = nlohmann::json::parse(in);
  }
  rewrite([](nlohmann::json& j) { j["peft_type"] = "IA3"; });
  expect_user_error([&] { read_peft_adapter(dir); }, config, "peft_type: \"IA3\"; valid: \"LORA\"");
  rewrite([&](nlohmann::json& j) { j = original, j["rank_pattern"] = {{"q_proj", 8}}; });
  expect_user_error([&] { read_peft_adapter(dir); }, config, "rank_pattern: {\"q_proj\":8} is not supported");
  rewrite([&](nlohmann::json& j) { j = original, j["r"] = 2.5; });
  expect_user_error([&] { read_peft_adapter(dir); }, config, "r: 2.5; valid: an integer >= 1");
  rewrite([&](nlohmann::json& j) { j = original, j.erase("r"); });
  expect_user_error([&] { read_peft_adapter(dir); }, config, "missing required key 'r'");
  rewrite([&](nlohmann::json& j) { j = original, j["use_dora"] = true; });
  expect_user_error([&] { read_peft_adapter(dir); }, weights, "lacks lora_magnitude_vector");
  std::ofstream(config) << "{nope";
  expect_user_error([&] { read_peft_adapter(dir); }, config, "not valid JSON");
  std::ofstream(config) << original.dump();

  // A tensor that is not LoRA's.
  write_safetensors(weights,
                    {{"base_model.model.model.embed_tokens.lora_embedding_A", torch::zeros({2, 3})}});
  expect_user_error([&] { read_peft_adapter(dir); }, weights, "not a LoRA tensor");
}

}  // namespace
}  // namespace kiln
