// The single-process training loop: loss falls, a stopped-and-resumed run equals the
// uninterrupted one bit for bit, accumulation and recomputation change nothing, and broken
// checkpoints are named.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "data/loader.h"
#include "models/llama.h"
#include "models/safetensors.h"
#include "test_data_util.h"
#include "test_train_util.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/model_setup.h"
#include "trainer/run_dir.h"
#include "trainer/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

Config tiny(const TempDir& dir, const std::string& run, std::vector<std::string> sets = {}) {
  return test::tiny_config(dir, run, std::move(sets), /*steps=*/6);
}
using test::expect_same_weights;
using test::metric_losses;

TEST(Train, LossFallsAndCheckpointsRotate) {
  TempDir dir;
  Config cfg = tiny(dir, "run", {"checkpoint.every=2", "checkpoint.keep_last=2"});
  TrainResult r = train(cfg);
  ASSERT_EQ(r.losses.size(), 6u);
  EXPECT_LT(r.losses.back(), r.losses.front() - 0.3);
  EXPECT_EQ(metric_losses(cfg.train.run_dir), r.losses);
  // every=2 over 6 steps saves 2, 4, 6; keep_last=2 leaves 4 and 6.
  std::vector<std::string> kept;
  for (const auto& e : fs::directory_iterator(checkpoint_root(cfg.train.run_dir)))
    if (e.is_directory()) kept.push_back(e.path().filename().string());
  std::sort(kept.begin(), kept.end());
  EXPECT_EQ(kept, (std::vector<std::string>{"step-00000004", "step-00000006"}));
  EXPECT_EQ(fs::path(latest_checkpoint(cfg.train.run_dir)).filename(), "step-00000006");
}

TEST(Train, ResumeEqualsUninterruptedRun) {
  TempDir dir;
  Config whole = tiny(dir, "whole");
  TrainResult a = train(whole);

  Config parts = tiny(dir, "parts");
  TrainOptions stop_early;
  stop_early.exit_after = 2;
  TrainResult first = train(parts, stop_early);
  EXPECT_EQ(first.last_step, 2);
  TrainResult second = train(parts, stop_early);  // resumes at 2, stops after 4
  EXPECT_EQ(second.first_step, 2);
  EXPECT_EQ(second.last_step, 4);
  TrainResult third = train(parts);
  EXPECT_EQ(third.first_step, 4);
  EXPECT_EQ(third.last_step, 6);

  std::vector<double> resumed = metric_losses(parts.train.run_dir);
  ASSERT_EQ(resumed.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(resumed[i], a.losses[i]) << "step " << i + 1;
  expect_same_weights(latest_checkpoint(whole.train.run_dir), latest_checkpoint(parts.train.run_dir));
}

// A save that fails midway (KILN_TEST_FAULT, test_hooks.h) leaves the previous checkpoint
// complete, `latest` naming it and no step-N directory; the run resumes from it as if nothing
// happened. A save that stops after the rename but before `latest` is complete: resumed from.
TEST(Train, AnInterruptedSaveLeavesThePreviousCheckpointAlone) {
  TempDir dir;
  const std::vector<std::string> sets = {"train.steps=4", "checkpoint.every=2", "checkpoint.keep_last=1"};
  const std::vector<double> whole = train(tiny(dir, "whole", sets)).losses;
  for (const std::string point : {"shards", "state", "renamed"}) {
    Config cfg = tiny(dir, "run-" + point, sets);
    const std::string root = checkpoint_root(cfg.train.run_dir);
    ::setenv("KILN_TEST_FAULT", ("throw:" + point + ":4").c_str(), 1);
    EXPECT_THROW(train(cfg), std::runtime_error) << point;
    ::unsetenv("KILN_TEST_FAULT");
    EXPECT_EQ(test::read_text(root + "/latest"), "step-00000002\n") << point;
    EXPECT_TRUE(verify_checkpoint(root + "/step-00000002").ok()) << point;
    const auto complete = complete_checkpoints(cfg.train.run_dir);
    if (point == "renamed") {
      ASSERT_EQ(complete.size(), 2u);  // step 4 is complete: resume takes it though `latest` lags
      EXPECT_TRUE(verify_checkpoint(root + "/step-00000004").ok());
    } else {
      ASSERT_EQ(complete.size(), 1u) << point;
      EXPECT_EQ(complete[0].first, 2) << point;
      EXPECT_FALSE(fs::exists(root + "/step-00000004")) << point;
    }
    const TrainResult rest = train(cfg);
    EXPECT_EQ(rest.first_step, point == "renamed" ? 4 : 2) << point;
    EXPECT_EQ(metric_losses(cfg.train.run_dir), whole) << point;
    if (point != "renamed") {
      EXPECT_EQ(test::read_text(root + "/latest"), "step-00000004\n") << point;
    }
    EXPECT_EQ(fs::path(latest_checkpoint(cfg.train.run_dir)).filename(), "step-00000004") << point;
    expect_same_weights(latest_checkpoint(cfg.train.run_dir), latest_checkpoint(dir / "whole"));
  }
}

// model.init_from: ckpt: (the worked example's SFT after pretraining): the SFT run's step-0
// weights are the checkpoint's, from a run directory (its latest) or a named checkpoint, and
// its optimizer starts fresh (zero moments), on its own data.
TEST(Train, InitFromCheckpointStartsFromItsWeights) {
  TempDir dir;
  Config pre = tiny(dir, "pretrain", {"train.steps=2", "checkpoint.every=1", "checkpoint.keep_last=5"});
  train(pre);
  const std::string root = checkpoint_root(pre.train.run_dir);
  for (const auto& [from, want] :
       std::vector<std::pair<std::string, std::string>>{{pre.train.run_dir, root + "/step-00000002"},
                                                        {root + "/step-00000001", root + "/step-00000001"}}) {
    const std::string run = "sft-" + fs::path(want).filename().string();
    Config sft = tiny(dir, run,
                      {"model.init_from=ckpt:" + from, "data.mixture=" + (dir / "sft_firefly.jsonl"),
                       "data.format=firefly", "train.steps=0"});
    train(sft);
    const std::string step0 = checkpoint_root(sft.train.run_dir) + "/step-00000000";
    expect_same_weights(step0, want);
    int64_t moments = 0;
    for (const TensorSlice& s : read_checkpoint_slices(step0))
      if (s.name.rfind("exp_avg", 0) == 0) {
        EXPECT_EQ(s.data.abs().max().item<double>(), 0.0) << s.name;
        ++moments;
      }
    EXPECT_GT(moments, 0);
  }
  // And not the seeded init: the same SFT without init_from starts elsewhere.
  Config fresh = tiny(dir, "sft-fresh", {"train.steps=0"});
  train(fresh);
  const auto a = read_checkpoint_weights(checkpoint_root(fresh.train.run_dir) + "/step-00000000");
  const auto b = read_checkpoint_weights(root + "/step-00000001");
  EXPECT_FALSE(a[0].second.equal(b[0].second)) << a[0].first;
}

TEST(Train, AccumulationAndRecomputationChangeNothing) {
  TempDir dir;
  TrainResult base = train(tiny(dir, "base"));
  TrainResult accum = train(tiny(dir, "accum", {"train.micro_batch_size=1"}));  // 4 micro-batches
  TrainResult full = train(tiny(dir, "full", {"train.activation_checkpointing=full"}));
  TrainResult sel = train(tiny(dir, "sel", {"train.activation_checkpointing=selective"}));
  for (size_t i = 0; i < base.losses.size(); ++i) {
    EXPECT_NEAR(accum.losses[i], base.losses[i], 1e-5 * std::abs(base.losses[i])) << i;
    EXPECT_NEAR(full.losses[i], base.losses[i], 1e-6 * std::abs(base.losses[i])) << i;
    EXPECT_NEAR(sel.losses[i], base.losses[i], 1e-6 * std::abs(base.losses[i])) << i;
  }
}

// The first logged loss is the initial model's loss on step 0's global batch: recompute it
// here from the loader and the seeded model, as a mean over tokens and as a mean over samples.
TEST(Train, FirstLossIsTheTokenOrSampleMeanOfTheGlobalBatch) {
  TempDir dir;
  for (const char* mode : {"token", "sample"}) {
    Config cfg =
        tiny(dir, std::string("run-") + mode, {"train.steps=1", std::string("data.loss_average=") + mode});
    TrainResult r = train(cfg);
    Llama model = build_model(cfg, /*prefer_run_dir=*/false, nullptr);
    DataLoader loader(cfg, 0, 1, 4);
    at::NoGradGuard no_grad;
    double tokens = 0, samples = 0, token_sum = 0, sample_sum = 0;
    int64_t batch_source_tokens = 0;
    for (int i = 0; i < 2; ++i) {  // 2 micro-batches of 2 make the global batch of 4
      Batch b = loader.next();
      for (int64_t n : b.source_tokens) batch_source_tokens += n;
      at::Tensor logits = model->forward(b);
      at::Tensor per_token =
          at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), b.labels.reshape(-1), {},
                                 at::Reduction::None, kIgnoreIndex)
              .view(b.labels.sizes());
      token_sum += per_token.sum().item<double>();
      tokens += static_cast<double>(b.loss_tokens);
      // Samples: runs of positions starting at position 0, inside one row.
      for (int64_t row = 0; row < b.labels.size(0); ++row) {
        double s_loss = 0, s_tok = 0;
        for (int64_t t = 0; t <= b.labels.size(1); ++t) {
          bool boundary = t == b.labels.size(1) || b.position_ids[row][t].item<int64_t>() == 0;
          if (boundary && t > 0 && s_tok > 0) sample_sum += s_loss / s_tok, samples += 1;
          if (boundary) s_loss = 0, s_tok = 0;
          if (t < b.labels.size(1) && b.labels[row][t].item<int64_t>() != kIgnoreIndex)
            s_loss += per_token[row][t].item<double>(), s_tok += 1;
        }
      }
    }
    const double expected = std::string(mode) == "token" ? token_sum / tokens : sample_sum / samples;
    EXPECT_NEAR(r.losses[0], expected, 1e-5 * expected) << mode;
    EXPECT_GT(std::abs(token_sum / tokens - sample_sum / samples), 1e-4);  // the modes really differ
    // metrics.jsonl counts every source's tokens of the global batch.
    std::ifstream in(fs::path(cfg.train.run_dir) / "metrics.jsonl");
    std::string line;
    std::getline(in, line);
    auto row = nlohmann::json::parse(line);
    int64_t total = 0;
    for (auto& [name, n] : row["source_tokens"].items()) total += n.get<int64_t>();
    // Exactly what the same loader reports after the same global batch.
    EXPECT_EQ(total, batch_source_tokens);
    EXPECT_EQ(row["loss_tokens"].get<int64_t>(), static_cast<int64_t>(tokens));
    EXPECT_EQ(row["packing_efficiency"].get<double>(), loader.packing_efficiency());
    EXPECT_EQ(row["samples_dropped"].get<int64_t>(), 0);  // data.overlong: truncate
    EXPECT_EQ(row["samples_truncated"].get<int64_t>(), loader.truncated());
  }
}

// metrics.jsonl's lr is the schedule's closed form (warmup 1, cosine from 0.01 to 0.001 over
// steps 2..6), and the resolved config is stored in RUN_DIR/config.yaml and every checkpoint.
TEST(Train, MetricsLrIsTheScheduleAndTheConfigIsStored) {
  TempDir dir;
  Config cfg = tiny(dir, "run", {"checkpoint.every=2", "checkpoint.keep_last=5"});
  train(cfg);
  const double c = 0.5 * (1 + std::cos(M_PI / 4));
  const std::vector<double> want = {0.01, 0.01, 0.001 + 0.009 * c, 0.0055, 0.001 + 0.009 * (1 - c), 0.001};
  std::vector<double> got;
  std::ifstream in(fs::path(cfg.train.run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    got.push_back(nlohmann::json::parse(line)["lr"].get<double>());
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "step " << i + 1;

  const std::string yaml = to_yaml(cfg);
  EXPECT_EQ(test::read_text(cfg.train.run_dir + "/config.yaml"), yaml);
  int checkpoints = 0;
  for (const auto& e : fs::directory_iterator(checkpoint_root(cfg.train.run_dir)))
    if (e.is_directory()) {
      EXPECT_EQ(test::read_text((e.path() / "config.yaml").string()), yaml) << e.path();
      ++checkpoints;
    }
  EXPECT_EQ(checkpoints, 3);
  // What is stored reads back as the same config.
  EXPECT_EQ(to_yaml(load_config(cfg.train.run_dir + "/config.yaml")), yaml);
}

TEST(Train, EvalEveryLogsWhatEvalPrints) {
  TempDir dir;
  Config cfg = tiny(dir, "run", {"train.eval_every=3", "data.eval=" + (dir / "pretrain.jsonl")});
  train(cfg);
  std::vector<std::pair<int64_t, double>> evals;
  std::ifstream in(fs::path(cfg.train.run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto row = nlohmann::json::parse(line);
    if (row.contains("eval_loss"))
      evals.emplace_back(row["step"].get<int64_t>(), row["eval_loss"].get<double>());
  }
  ASSERT_EQ(evals.size(), 2u);
  EXPECT_EQ(evals[0].first, 3);
  EXPECT_EQ(evals[1].first, 6);
  EXPECT_LT(evals[1].second, evals[0].second);
  EvalResult final_eval = evaluate(cfg);  // the latest checkpoint: step 6
  EXPECT_NEAR(final_eval.loss, evals[1].second, 1e-6 * final_eval.loss);
}

TEST(Train, BrokenCheckpointsAreNamed) {
  TempDir dir;
  Config cfg = tiny(dir, "run", {"train.steps=2"});
  train(cfg);
  const std::string root = checkpoint_root(cfg.train.run_dir);
  // `latest` naming a directory that is not complete: the newest complete checkpoint is used
  // (run_dir.h), never random init.
  test::write_text(root + "/latest", "step-00000099\n");
  TrainResult recovered = train(tiny(dir, "run", {"train.steps=3"}));
  EXPECT_EQ(recovered.first_step, 2);
  // A corrupt state.json: named in a warning, and the previous checkpoint is used (verified
  // resume, checkpoint.h; tests/e2e/test_checkpoint_corruption.sh covers every kind of damage).
  test::write_text(root + "/latest", "step-00000003\n");
  test::write_text(root + "/step-00000003/state.json", "{\"step\": ");
  EXPECT_EQ(verify_checkpoint(root + "/step-00000003").problem.find("state.json: corrupt checkpoint state") !=
                std::string::npos,
            true);
  TrainResult fell_back = train(tiny(dir, "run", {"train.steps=3"}));
  EXPECT_EQ(fell_back.first_step, 2);
  // resume: never over existing checkpoints is refused (it would prune them); see test_run_dir.cpp.
  try {
    train(tiny(dir, "run", {"train.steps=2", "train.resume=never"}));
    FAIL() << "resume: never over checkpoints was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("train.resume: never, but "), std::string::npos) << e.what();
  }
}

TEST(Train, ExplicitResumeDirectoryMustBeACheckpoint) {
  TempDir dir;
  try {
    train(tiny(dir, "run", {"train.resume=" + (dir / "nowhere")}));
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("train.resume:"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln
