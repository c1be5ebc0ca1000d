// LoRA wired into the model and the optimizer, against PEFT on the whole tiny HF model
// (tests/fixtures/lora/make_fixture.py): logits, loss and every adapter gradient for LoRA, rsLoRA
// and DoRA on all seven projections of every layer (fp32 CPU, 1e-5 relative), and one LoRA+ AdamW
// step equal to PEFT's create_loraplus_optimizer. Then what the wiring promises: the base frozen
// (no gradient, not in the optimizer), the HF names kept, lm_head never adapted, the NF4 base
// never cast by to(dtype), and the merge equal to the adapted forward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>

#include "models/hf.h"
#include "models/llama.h"
#include "models/lora_projection.h"
#include "models/safetensors.h"
#include "models/weight_source.h"
#include "parallel/communicator_backends.h"
#include "parallel/zero.h"
#include "trainer/lora_setup.h"
#include "trainer/model_setup.h"
#include "trainer/trainer.h"
#include "test_train_util.h"

namespace kiln {
namespace {

const std::string kHf = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/llama_linear";
const std::string kFixture = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/lora/model_parity.safetensors";

void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what, double tol = 1e-5) {
  ASSERT_TRUE(a.defined()) << what << " undefined";
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const double rel = ((a - b).norm() / b.norm().clamp_min(1e-30)).item<double>();
  EXPECT_LE(rel, tol) << what << ": relative error " << rel;
}

Config lora_config(const std::string& which) {
  Config c;
  c.model = read_hf_config(kHf);
  c.model.init_from = "hf:" + kHf;
  c.lora.rank = 4;
  c.lora.alpha = 8;
  c.lora.rslora = which == "rslora";
  c.lora.dora = which == "dora";
  if (which == "loraplus") c.lora.lr_ratio = 16;
  return c;
}

// The model of `c` with the base from the HF fixture and the adapters from the parity fixture.
Llama fixture_model(const Config& c, const std::string& which, LoraLoad* load = nullptr) {
  Llama model(c.model, LlamaBuild{StageSpec{}, run_projections(c, nullptr), /*meta=*/true});
  SafetensorsFile fx(kFixture);
  std::vector<std::pair<std::string, at::Tensor>> adapters;
  for (const auto& item : model->named_parameters())
    if (is_lora_parameter(item.key())) adapters.emplace_back(item.key(), fx.tensor(which + "." + item.key()));
  auto src = tensors_source(adapters, "fixture");
  auto base = initial_weights(c, *model);
  LoraLoad l = load_lora_model(*model, c, *base, src.get());
  if (load) *load = std::move(l);
  return model;
}

Batch fixture_batch() {
  SafetensorsFile fx(kFixture);
  Batch b;
  b.input_ids = fx.tensor("input_ids").to(at::kLong);
  b.labels = fx.tensor("labels").to(at::kLong);
  b.position_ids = torch::arange(b.input_ids.size(1)).expand_as(b.input_ids).contiguous();
  return b;
}

class LoraModelPeft : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraModelPeft, LogitsLossAndAdapterGradientsEqualPeft) {
  const std::string which = GetParam();
  Config c = lora_config(which);
  Llama model = fixture_model(c, which);
  model->train();
  SafetensorsFile fx(kFixture);
  Batch b = fixture_batch();
  at::Tensor logits = model->forward(b);
  expect_close(logits, fx.tensor(which + ".logits"), which + " logits");
  at::Tensor loss = lm_loss_sum(logits, b.labels);
  expect_close(loss.reshape({1}), fx.tensor(which + ".loss"), which + " loss");
  loss.backward();
  int adapters = 0;
  for (const auto& item : model->named_parameters()) {
    if (is_lora_parameter(item.key())) {
      expect_close(item.value().grad(), fx.tensor(which + ".grad." + item.key()), item.key());
      ++adapters;
    } else {
      EXPECT_FALSE(item.value().requires_grad()) << item.key();
      EXPECT_FALSE(item.value().grad().defined()) << item.key();
    }
  }
  EXPECT_EQ(adapters, 3 * 7 * (which == "dora" ? 3 : 2));
}

INSTANTIATE_TEST_SUITE_P(Cases, LoraModelPeft, ::testing::Values("lora", "rslora", "dora", "loraplus"));

// One AdamW step with LoRA+ groups (B at lr * 16) over the adapters only equals PEFT's
// create_loraplus_optimizer step (weight decay 0.1 scaled by each group's lr, as torch's AdamW).
TEST(LoraModel, LoraPlusStepEqualsPeftsLoraPlusOptimizer) {
  Config c = lora_config("loraplus");
  LoraLoad load;
  Llama model = fixture_model(c, "loraplus", &load);
  auto dp = make_single_communicator("dp");
  AdamWOptions hyper{0.1, 0.9, 0.95, 1e-8, {}};
  hyper.lr_scale = lora_lr_scales(*model, c);
  EXPECT_EQ(hyper.lr_scale.size(), 21u);  // every lora_B
  for (const auto& [name, s] : hyper.lr_scale) {
    EXPECT_NE(name.find(".lora_B"), std::string::npos) << name;
    EXPECT_DOUBLE_EQ(s, 16.0);
  }
  ZeroOptimizer opt(*model, *dp, 0, 1 << 20, hyper, false, *load.adapters);
  EXPECT_EQ(opt.trained_shapes().size(), 42u);  // A and B of 21 projections: no base tensor
  model->train();
  Batch b = fixture_batch();
  opt.zero_grad();
  lm_loss_sum(model->forward(b), b.labels).backward();
  opt.reduce_gradients();
  opt.step(1e-2, 1.0);
  SafetensorsFile fx(kFixture);
  for (const auto& item : model->named_parameters())
    if (is_lora_parameter(item.key()))
      expect_close(item.value(), fx.tensor("loraplus.after." + item.key()), item.key(), 1e-5);
}

TEST(LoraModel, KeepsHfNamesAndNeverAdaptsTheHead) {
  Config c = lora_config("lora");
  c.lora.targets = {"q_proj", "down_proj"};
  Llama model(c.model, LlamaBuild{StageSpec{}, run_projections(c, nullptr), /*meta=*/true});
  std::vector<std::string> names;
  for (const auto& item : model->named_parameters()) names.push_back(item.key());
  auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  EXPECT_TRUE(has("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(has("model.layers.0.self_attn.q_proj.lora_A"));
  EXPECT_TRUE(has("model.layers.2.mlp.down_proj.lora_B"));
  EXPECT_FALSE(has("model.layers.0.self_attn.k_proj.lora_A"));
  EXPECT_TRUE(has("lm_head.weight"));
  EXPECT_FALSE(has("lm_head.lora_A"));
  EXPECT_EQ(lora_projections_of(*model).size(), 6u);
  EXPECT_EQ(parameter_shapes(*model).size(), names.size() - 12);  // the base's tensors only
  c.lora.targets = {"all_linear"};
  EXPECT_TRUE(lora_targets(c.lora.targets, "gate_proj"));
  EXPECT_FALSE(lora_targets(c.lora.targets, "lm_head"));
}

// QLoRA: the base projections hold NF4 codes (nothing dense left), Module::to(dtype) leaves the
// codes uint8 and the output follows the activation's dtype; the merged weight of every
// projection equals what its forward computes (y = x W'^T).
TEST(LoraModel, QloraBaseIsPackedNeverCastAndMergesToItsForward) {
  Config c = lora_config("dora");
  c.lora.quantize_base = BaseQuant::nf4;
  c.lora.targets = {"q_proj", "v_proj"};
  Llama model = fixture_model(c, "dora");
  const auto all = lora_projections_of(*model, /*with_adapter=*/false);
  ASSERT_EQ(all.size(), 21u);  // every base projection wrapped, 6 with adapters
  EXPECT_EQ(lora_projections_of(*model).size(), 6u);
  int64_t packed = 0, base_params = 0;
  for (const auto& [path, p] : all) {
    ASSERT_NE(p->nf4(), nullptr) << path;
    EXPECT_EQ(p->weight.numel(), 0) << path;
    EXPECT_FALSE(p->weight.requires_grad()) << path;
    packed += p->nf4()->nbytes();
    base_params += p->spec().in * p->spec().out;
  }
  EXPECT_NEAR(static_cast<double>(packed) / base_params, 0.5 + 1.0 / 64 + 0.0001, 0.01);
  model->eval();
  at::Tensor x = torch::randn({2, 3, 64});
  auto* q = all[0].second;
  expect_close(q->forward(x), at::linear(x, q->merged_weight()), "merged q_proj");
  model->to(at::kBFloat16);
  EXPECT_EQ(q->nf4()->packed.scalar_type(), at::kByte);
  EXPECT_EQ(q->forward(x.to(at::kBFloat16)).scalar_type(), at::kBFloat16);
}

// Dropout through the trainer: the step runner's clock makes recomputation (full and selective
// activation checkpointing) draw the forward's masks, so the losses are those of the run without
// recomputation bit for bit; the masks are real (dropout 0 trains otherwise), and a run stopped
// after 2 steps and resumed gives the uninterrupted run's losses and adapters bit for bit.
TEST(LoraTrain, RecomputationAndResumeRedrawTheSameDropoutMasks) {
  test::TempDir dir;
  auto cfg = [&](const std::string& run, std::vector<std::string> sets) {
    for (const char* s : {"lora.rank=4", "lora.alpha=8", "lora.dropout=0.3", "train.weight_decay=0.01"})
      sets.insert(sets.begin(), s);
    return test::tiny_config(dir, run, sets, /*steps=*/4);
  };
  const TrainResult none = train(cfg("none", {}));
  const TrainResult full = train(cfg("full", {"train.activation_checkpointing=full"}));
  const TrainResult sel = train(cfg("sel", {"train.activation_checkpointing=selective"}));
  const TrainResult off = train(cfg("off", {"lora.dropout=0"}));
  ASSERT_EQ(none.losses.size(), 4u);
  EXPECT_EQ(full.losses, none.losses);
  EXPECT_EQ(sel.losses, none.losses);
  EXPECT_NE(off.losses[3], none.losses[3]);
  TrainOptions stop;
  stop.exit_after = 2;
  train(cfg("cut", {"train.activation_checkpointing=full"}), stop);
  const TrainResult rest = train(cfg("cut", {"train.activation_checkpointing=full"}));
  EXPECT_EQ(rest.first_step, 2);
  EXPECT_EQ(test::metric_losses(dir / "cut"), test::metric_losses(dir / "full"));
  test::expect_same_weights(latest_checkpoint(dir / "cut"), latest_checkpoint(dir / "full"));
  // Only adapters in the checkpoint: A and B of 7 projections x 2 layers.
  EXPECT_EQ(checkpoint_trained(latest_checkpoint(dir / "cut")).size(), 28u);
  EXPECT_EQ(checkpoint_tensors(latest_checkpoint(dir / "cut")).size(), 28u);
}

}  // namespace
}  // namespace kiln
