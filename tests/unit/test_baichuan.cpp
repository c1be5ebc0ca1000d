// Baichuan by its architecture (issue 14): ALiBi and NormHead decided from what a checkpoint's
// config and tensors say, not from hidden_size == 5120 or vocab_size == 125696; NormHead
// normalises the head's rows in every forward, so training follows the normalised weight.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "models/hf.h"
#include "models/llama.h"
#include "models/lm_head.h"
#include "models/safetensors.h"
#include "test_data_util.h"
#include "trainer/config.h"
#include "base/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;

json baichuan(int64_t hidden, int64_t vocab) {
  return {{"model_type", "baichuan"}, {"vocab_size", vocab},      {"hidden_size", hidden},
          {"num_hidden_layers", 2},   {"num_attention_heads", 8}, {"intermediate_size", 3 * hidden},
          {"rms_norm_eps", 1e-6},     {"hidden_act", "silu"},     {"architectures", {"BaichuanForCausalLM"}}};
}

std::string config_dir(const TempDir& dir, const std::string& name, const json& j) {
  fs::create_directories(dir / name);
  test::write_text(dir / (name + "/config.json"), j.dump());
  return dir / name;
}

TEST(Baichuan, PositionAndHeadComeFromTheModelClass) {
  TempDir dir;
  // A pruned Baichuan-13B: hidden 4096, yet the 13B class (no max_position_embeddings, context in
  // model_max_length) builds ALiBi.
  json b13 = baichuan(4096, 64000);
  b13["model_max_length"] = 4096;
  ModelConfig c = read_hf_config(config_dir(dir, "b13", b13));
  EXPECT_EQ(c.position, Position::alibi);
  EXPECT_FALSE(c.norm_head);
  // Baichuan2-13B with an extended vocabulary: still NormHead (its config class has z_loss_weight).
  json b2 = b13;
  b2["vocab_size"] = 130000;
  b2["z_loss_weight"] = 0;
  c = read_hf_config(config_dir(dir, "b2_13", b2));
  EXPECT_EQ(c.position, Position::alibi);
  EXPECT_TRUE(c.norm_head);
  EXPECT_EQ(c.vocab_size, 130000);
  // Baichuan2-7B: RoPE up to max_position_embeddings, NormHead.
  json b2_7 = baichuan(4096, 125696);
  b2_7["max_position_embeddings"] = 4096;
  b2_7["model_max_length"] = 4096;
  b2_7["z_loss_weight"] = 0;
  c = read_hf_config(config_dir(dir, "b2_7", b2_7));
  EXPECT_EQ(c.position, Position::rope);
  EXPECT_TRUE(c.norm_head);
  // Baichuan-7B's own class name means RoPE, even without max_position_embeddings.
  json b7 = baichuan(5120, 64000);
  b7["model_max_length"] = 4096;
  b7["architectures"] = {"BaiChuanForCausalLM"};
  c = read_hf_config(config_dir(dir, "b7", b7));
  EXPECT_EQ(c.position, Position::rope);
  EXPECT_FALSE(c.norm_head);
  // Rotary buffers in the checkpoint mean RoPE too.
  json tensors_say = baichuan(32, 64);
  tensors_say["model_max_length"] = 64;
  const std::string d = config_dir(dir, "inv_freq", tensors_say);
  write_safetensors(d + "/model.safetensors",
                    {{"model.layers.0.self_attn.rotary_emb.inv_freq", torch::ones({2})}});
  EXPECT_EQ(read_hf_config(d).position, Position::rope);
  // kiln's own keys (what kiln export writes) win over the class rules.
  json own = b13;
  own["position"] = "rope";
  own["norm_head"] = true;
  c = read_hf_config(config_dir(dir, "own", own));
  EXPECT_EQ(c.position, Position::rope);
  EXPECT_TRUE(c.norm_head);
  // A Llama never gets either.
  json llama = baichuan(64, 96);
  llama["model_type"] = "llama";
  llama["max_position_embeddings"] = 64;
  llama["z_loss_weight"] = 0;
  c = read_hf_config(config_dir(dir, "llama", llama));
  EXPECT_EQ(c.position, Position::rope);
  EXPECT_FALSE(c.norm_head);
}

TEST(Baichuan, ModelKeysComeFromInitFromAndExportWritesThemBack) {
  TempDir dir;
  json b2 = baichuan(32, 100);
  b2["max_position_embeddings"] = 256;
  b2["z_loss_weight"] = 0;
  const std::string d = config_dir(dir, "b2", b2);
  Config cfg = parse_config(str("model: {init_from: 'hf:", d, "'}\n"), dir / "cfg.yaml");
  EXPECT_TRUE(cfg.model.norm_head);
  EXPECT_EQ(cfg.model.arch, Arch::baichuan);
  Config off = parse_config(str("model: {init_from: 'hf:", d, "', norm_head: false}\n"), dir / "cfg.yaml");
  EXPECT_FALSE(off.model.norm_head);  // a key written in the YAML wins

  // Export: NormHead is written as the normalised rows plus norm_head: true, so transformers'
  // plain head and a kiln re-import both give the same logits.
  ModelConfig mc;
  mc.vocab_size = 50;
  mc.hidden_size = 16;
  mc.num_heads = 2;
  mc.norm_head = true;
  torch::manual_seed(1);
  Llama model(mc);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : model->named_parameters()) named.emplace_back(item.key(), item.value().detach());
  save_hf(named, mc, dir / "out");
  json j = json::parse(test::read_text(dir / "out/config.json"));
  EXPECT_EQ(j["norm_head"], true);
  EXPECT_EQ(j["position"], "rope");
  SafetensorsFile st(dir / "out/model.safetensors");
  at::Tensor head = st.tensor("lm_head.weight");
  EXPECT_TRUE(torch::allclose(head.norm(2, {1}), torch::ones({50}), 1e-6, 1e-6));
  ModelConfig back = read_hf_config(dir / "out");
  EXPECT_TRUE(back.norm_head);
  Llama again(back);
  load_hf_weights(*again, dir / "out");
  Batch b;
  b.input_ids = torch::randint(0, 50, {1, 6}, torch::kLong);
  b.labels = b.input_ids;
  b.position_ids = torch::arange(6).view({1, 6});
  at::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(model->forward(b), again->forward(b), 1e-5, 1e-5));
  ModelConfig plain = back;
  plain.norm_head = false;  // transformers' LlamaForCausalLM: the stored rows as they are
  Llama llama(plain);
  load_hf_weights(*llama, dir / "out");
  EXPECT_TRUE(torch::allclose(model->forward(b), llama->forward(b), 1e-5, 1e-5));
}

// The reference: the same decoder, with the head written out as Baichuan2's NormHead does in
// training, F.linear(h, F.normalize(W)), recomputed every forward.
TEST(Baichuan, NormHeadTrainsThroughTheNormalisation) {
  ModelConfig mc;
  mc.vocab_size = 40;
  mc.hidden_size = 16;
  mc.num_heads = 2;
  mc.num_layers = 1;
  mc.norm_head = true;
  torch::manual_seed(2);
  Llama model(mc);
  {
    at::NoGradGuard no_grad;
    model->lm_head->weight.mul_(3.0);  // rows far from unit norm, as a raw checkpoint has
  }
  StageSpec body_only;
  body_only.has_head = false;
  Llama body(mc, body_only);
  RMSNorm norm(mc.hidden_size, mc.norm_eps);
  at::Tensor head;
  {
    at::NoGradGuard no_grad;
    auto src = model->named_parameters();
    for (auto& item : body->named_parameters()) item.value().copy_(src[item.key()]);
    norm->weight.set_data(src["model.norm.weight"].clone());  // a placeholder until set
    head = src["lm_head.weight"].clone().requires_grad_(true);
  }
  Batch b;
  b.input_ids = torch::randint(0, 40, {2, 8}, torch::kLong);
  b.labels = torch::randint(0, 40, {2, 8}, torch::kLong);
  b.position_ids = torch::arange(8).repeat({2, 1});
  std::vector<at::Tensor> ref_params = body->parameters();
  ref_params.push_back(norm->weight);
  ref_params.push_back(head);
  const double lr = 0.5;
  for (int step = 0; step < 4; ++step) {
    for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
    for (auto& p : ref_params) p.mutable_grad() = at::Tensor();
    at::Tensor loss = lm_loss_sum(model->forward(b), b.labels);
    at::Tensor h = norm(body->forward(b));
    at::Tensor w = head / head.norm(2, {1}, true).clamp_min(1e-12);
    at::Tensor ref = lm_loss_sum(at::linear(h, w), b.labels);
    EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-4) << "step " << step;
    loss.backward();
    ref.backward();
    at::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.sub_(p.grad() * lr);
    for (auto& p : ref_params) p.sub_(p.grad() * lr);
  }
  // The raw rows moved off their norms; the rows the logits use still have unit norm.
  at::Tensor raw = model->lm_head->weight.detach();
  EXPECT_TRUE(torch::allclose(raw, head.detach(), 1e-4, 1e-4));
  EXPECT_TRUE(torch::allclose(effective_head_weight(raw, mc).norm(2, {1}), torch::ones({40}), 1e-6, 1e-6));
  EXPECT_FALSE(torch::allclose(raw.norm(2, {1}), torch::ones({40}), 1e-2, 1e-2));
}

TEST(Baichuan, NormHeadNeedsAnUntiedHead) {
  TempDir dir;
  try {
    parse_config("model: {norm_head: true, tie_embeddings: true}\n", dir / "cfg.yaml");
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("model.norm_head needs an untied head"), std::string::npos);
  }
}

}  // namespace
}  // namespace kiln
