// train.trainable and train.trainable_new_rows_only (issue 14): after a step only the trainable
// parameters (or rows) changed, bit for bit everything else; the optimizer holds only what
// trains; stage 2 resumed from stage 1's checkpoint with everything trainable equals one process
// that switched the trainable set in memory at the same step, with the same schedule.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "data/loader.h"
#include "models/hf.h"
#include "models/llama.h"
#include "models/safetensors.h"
#include "models/weight_source.h"
#include "parallel/communicator.h"
#include "parallel/zero.h"
#include "test_data_util.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "base/error.h"
#include "trainer/lr_schedule.h"
#include "trainer/model_setup.h"
#include "trainer/trainable.h"
#include "trainer/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

const std::string kHf = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/";

Config tiny(const TempDir& dir, const std::string& model, std::vector<std::string> sets) {
  for (const char* f : {"data.json", "pretrain.jsonl", "sft_firefly.jsonl"})
    if (!fs::exists(dir / f)) fs::copy_file(test::fixture(f), dir / f);
  std::string yaml =
      str("model: ", model, "\ntokenizer: ", test::tokenizer_path(), "\ndata: {mixture: ", dir / "data.json",
          ", seq_len: 32, prefetch: 1}\n", "train: {run_dir: ", dir / "run",
          ", steps: 4, micro_batch_size: 2, global_batch_size: 4, lr: 0.01, min_lr: 0.001,"
          " warmup_steps: 1, log_every: 100, threads: 1}\n");
  return parse_config(yaml, dir / "cfg.yaml", sets);
}
const char* kRandom =
    "{vocab_size: 700, hidden_size: 32, num_layers: 2, num_heads: 4, num_kv_heads: 2, max_seq_len: 64}";

std::map<std::string, at::Tensor> weights_of(const std::string& ckpt) {
  std::map<std::string, at::Tensor> out;
  for (auto& [n, t] : read_checkpoint_weights(ckpt)) out[n] = t.clone();
  return out;
}

std::set<std::string> optimizer_tensors(const std::string& ckpt) {
  std::set<std::string> out;
  for (const TensorSlice& s : read_checkpoint_slices(ckpt))
    if (s.name.rfind("weight/", 0) != 0) out.insert(s.name);  // frozen tensors are stored as weight/NAME
  return out;
}

class TrainableZero : public ::testing::TestWithParam<int> {};

TEST_P(TrainableZero, OnlyTheEmbeddingsMoveAndTheOptimizerHoldsOnlyThem) {
  TempDir dir;
  Config cfg =
      tiny(dir, kRandom,
           {"train.steps=1", "train.trainable=[embed_tokens, lm_head]", str("parallel.zero=", GetParam())});
  Llama before = build_model(cfg, false, nullptr);  // the run's initial weights (seeded)
  train(cfg);
  const std::string ckpt = latest_checkpoint(cfg.train.run_dir);
  std::map<std::string, at::Tensor> after = weights_of(ckpt);
  int64_t frozen = 0;
  for (const auto& item : before->named_parameters()) {
    ASSERT_TRUE(after.count(item.key())) << item.key() << " missing from the checkpoint";
    const bool trained = item.key() == "model.embed_tokens.weight" || item.key() == "lm_head.weight";
    EXPECT_EQ(after[item.key()].equal(item.value()), !trained) << item.key();
    frozen += !trained;
  }
  EXPECT_EQ(frozen, 2 * 9 + 1);  // every layer tensor and the final norm
  EXPECT_EQ(optimizer_tensors(ckpt),
            (std::set<std::string>{"master/model.embed_tokens.weight", "exp_avg/model.embed_tokens.weight",
                                   "exp_avg_sq/model.embed_tokens.weight", "master/lm_head.weight",
                                   "exp_avg/lm_head.weight", "exp_avg_sq/lm_head.weight"}));
}

TEST(Trainable, NewRowsOnlyKeepsTheCheckpointsRowsBitForBit) {
  TempDir dir;
  Config cfg = tiny(
      dir, str("{init_from: 'hf:", kHf, "llama_linear', vocab_size: 700}"),
      {"train.steps=2", "train.trainable=[embed_tokens, lm_head]", "train.trainable_new_rows_only=true"});
  train(cfg);
  std::map<std::string, at::Tensor> after = weights_of(latest_checkpoint(cfg.train.run_dir));
  HfWeights hf(kHf + "llama_linear");
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    SCOPED_TRACE(name);
    at::Tensor old = hf.tensor(name);
    EXPECT_TRUE(after[name].narrow(0, 0, 96).equal(old));  // no gradient, no weight decay
    // New rows started at the mean of the old rows and moved.
    at::Tensor mean = old.to(at::kDouble).mean(0).to(at::kFloat);
    at::Tensor moved = (after[name].narrow(0, 96, 604) - mean).abs().amax(1);  // (604)
    EXPECT_GT(moved.max().item<float>(), 1e-4f);
  }
  for (const std::string& name : hf.names()) {
    if (name != "model.embed_tokens.weight" && name != "lm_head.weight") {
      EXPECT_TRUE(after[name].equal(hf.tensor(name))) << name;
    }
  }
  // Without an extended vocabulary there are no new rows to train.
  Config bad = tiny(dir, str("{init_from: 'hf:", kHf, "llama_linear'}"),
                    {"train.trainable=[embed_tokens]", "train.trainable_new_rows_only=true", "tokenizer="});
  Llama m = build_model(bad, false, nullptr);
  try {
    apply_trainable(*m, bad);
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("train.trainable_new_rows_only: model.vocab_size (96) adds no rows"),
              std::string::npos)
        << e.what();
  }
}

TEST(Trainable, PatternsThatMatchNothingAreNamed) {
  TempDir dir;
  Config cfg = tiny(dir, kRandom, {"train.trainable=[embed_tokens, lm_haed]"});
  Llama m = build_model(cfg, false, nullptr);
  try {
    apply_trainable(*m, cfg);
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("train.trainable: 'lm_haed' matches no parameter"),
              std::string::npos);
  }
  EXPECT_TRUE(trainable_pattern_matches("model.layers.*.mlp.*", "model.layers.1.mlp.up_proj.weight"));
  EXPECT_FALSE(trainable_pattern_matches("model.layers.*.mlp.*", "model.layers.1.self_attn.q_proj.weight"));
  EXPECT_TRUE(trainable_pattern_matches("lm_head", "lm_head.weight"));
}

// ZeRO-3 leaves frozen units out of its shard groups (nothing gathered or reduced for them).
INSTANTIATE_TEST_SUITE_P(Stages, TrainableZero, ::testing::Values(0, 3));

// One process, the trainer's step written out: stage 1 trains `stage1` for `switch_at` steps,
// then the trainable set becomes everything and a new optimizer takes over the state in memory.
std::vector<double> one_go(const Config& stage1, const Config& stage2, int64_t switch_at,
                           std::map<std::string, at::Tensor>* final_weights) {
  auto dp = make_world_communicator("auto", false, 60.0);
  Llama model = build_model(stage1, false, nullptr);
  auto make = [&](const Config& c) {
    TrainableSet t = apply_trainable(*model, c);
    const TrainConfig& tc = c.train;
    return std::make_unique<ZeroOptimizer>(
        *model, *dp, 0, 25 << 20,
        AdamWOptions{tc.weight_decay, tc.betas[0], tc.betas[1], tc.eps, t.frozen_leading});
  };
  auto opt = make(stage1);
  const int64_t global = stage1.train.global_batch_size, accum = global / stage1.train.micro_batch_size;
  DataLoader loader(stage1, 0, 1, global);
  std::vector<double> losses;
  for (int64_t step = 0; step < stage1.train.steps; ++step) {
    if (step == switch_at) {
      // Single process, stage 0: each slice is a whole tensor. The state of what trained so far,
      // and the model's weights for what trains from now on.
      std::vector<std::pair<std::string, at::Tensor>> carried, weights;
      std::set<std::string> before;
      for (const TensorSlice& sl : opt->state_slices()) {
        carried.emplace_back(sl.name, sl.data.clone().view(sl.global_shape));
        before.insert(sl.name.substr(sl.name.find('/') + 1));
      }
      for (const auto& item : model->named_parameters())
        weights.emplace_back(item.key(), item.value().detach().clone());
      opt.reset();
      opt = make(stage2);
      opt->load_state(*widened_state_source(tensors_source(carried, "carried state"), before,
                                            tensors_source(weights, "model")),
                      step);
    }
    opt->zero_grad();
    std::vector<Batch> batches;
    double tokens = 0;
    for (int64_t i = 0; i < accum; ++i) {
      batches.push_back(loader.next());
      tokens += static_cast<double>(batches.back().loss_tokens);
    }
    double loss = 0;
    for (Batch& b : batches) {
      at::Tensor l = model->forward_loss(b) / std::max(1.0, tokens);  // the loss as the trainer computes it
      l.backward();
      loss += l.item<double>();
    }
    opt->reduce_gradients();
    const double norm = opt->grad_norm();
    const double clip = stage1.train.grad_clip;
    opt->step(lr_at(stage1.train, step), clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1.0);
    losses.push_back(loss);
  }
  for (auto& [n, t] : opt->gather_parameters()) (*final_weights)[n] = t;
  return losses;
}

TEST(Trainable, Stage2ResumedFromStage1EqualsOneRunThatSwitchedInMemory) {
  TempDir dir;
  const std::vector<std::string> s1 = {"train.trainable=[embed_tokens, lm_head]"};
  Config stage1 = tiny(dir, kRandom, s1);
  Config stage2 = tiny(dir, kRandom, {});
  // Two runs in one run dir: stage 1 stops after 2 of the 4 scheduled steps; stage 2 resumes.
  TrainOptions stop;
  stop.exit_after = 2;
  TrainResult r1 = train(stage1, stop);
  EXPECT_EQ(optimizer_tensors(latest_checkpoint(stage1.train.run_dir)).size(), 6u);
  TrainResult r2 = train(stage2);
  ASSERT_EQ(r2.first_step, 2);
  ASSERT_EQ(r2.losses.size(), 2u);
  EXPECT_EQ(optimizer_tensors(latest_checkpoint(stage2.train.run_dir)).size(), 3u * (2 + 2 * 9 + 1));

  std::map<std::string, at::Tensor> reference;
  std::vector<double> ref = one_go(stage1, stage2, 2, &reference);
  ASSERT_EQ(ref.size(), 4u);
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(r1.losses[i], ref[i], 1e-6) << "step " << i + 1;
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(r2.losses[i], ref[i + 2], 1e-6) << "step " << i + 3;
  std::map<std::string, at::Tensor> got = weights_of(latest_checkpoint(stage2.train.run_dir));
  ASSERT_EQ(got.size(), reference.size());
  for (auto& [n, t] : reference) EXPECT_TRUE(torch::allclose(got[n], t, 1e-6, 1e-7)) << n;
  // Stage 2 moved the layers that stage 1 froze.
  Llama init = build_model(stage1, false, nullptr);
  EXPECT_FALSE(got["model.layers.0.mlp.up_proj.weight"].equal(
      init->named_parameters()["model.layers.0.mlp.up_proj.weight"]));
}

}  // namespace
}  // namespace kiln
