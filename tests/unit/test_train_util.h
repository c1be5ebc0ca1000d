// Shared helpers for the tests that train: a tiny model on the data fixtures, the losses of a
// run's metrics.jsonl, the weights of two checkpoints compared, and a UserError's message.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/error.h"
#include "test_data_util.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"

namespace kiln::test {

// A tiny model (vocab 700, hidden 32, 2 layers, GQA 4/2) on the data fixtures, copied into `dir`
// so that prep's cache stays out of the tree; `steps` steps of a global batch of 4 rows of 32.
inline Config tiny_config(const TempDir& dir, const std::string& run, std::vector<std::string> sets = {},
                          int64_t steps = 6) {
  namespace fs = std::filesystem;
  for (const char* f : {"data.json", "pretrain.jsonl", "sft_firefly.jsonl"})
    if (!fs::exists(dir / f)) fs::copy_file(fixture(f), dir / f);
  std::string yaml =
      str("model: {vocab_size: 700, hidden_size: 32, num_layers: 2, num_heads: 4, num_kv_heads: 2, "
          "max_seq_len: 64}\n"
          "tokenizer: ",
          tokenizer_path(), "\n", "data: {mixture: ", dir / "data.json", ", seq_len: 32, prefetch: 1}\n",
          "train: {run_dir: ", dir / run, ", steps: ", steps,
          ", micro_batch_size: 2, global_batch_size: 4, lr: 0.01,"
          " min_lr: 0.001, warmup_steps: 1, log_every: 100, threads: 1}\n");
  return parse_config(yaml, dir / "cfg.yaml", sets);
}

// The training losses of RUN_DIR/metrics.jsonl in order (eval rows, which have eval_loss, left out).
inline std::vector<double> metric_losses(const std::string& run_dir) {
  std::vector<double> out;
  std::ifstream in(std::filesystem::path(run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto row = nlohmann::json::parse(line);
    if (row.contains("loss")) out.push_back(row["loss"].get<double>());
  }
  return out;
}

// Every weight assembled from each checkpoint's shards, equal bit for bit.
inline void expect_same_weights(const std::string& ckpt_a, const std::string& ckpt_b) {
  const auto a = read_checkpoint_weights(ckpt_a), b = read_checkpoint_weights(ckpt_b);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(a[i].second.equal(b[i].second)) << a[i].first;
  }
}

// The message of the UserError `f` throws, "(no error)" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace kiln::test

#define EXPECT_HAS(haystack, needle) EXPECT_NE((haystack).find(needle), std::string::npos) << (haystack)
