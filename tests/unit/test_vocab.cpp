// Vocabulary extension (issue 14): a tokenizer larger than the model is refused with one line
// or extended into; resized embeddings keep old rows bit for bit and start new ones as
// documented (tied and untied, any row range); padding rows are never predicted and export
// writes the real size; a loader refuses ids past the vocabulary.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "data/prep.h"
#include "data/vocab_check.h"
#include "models/hf.h"
#include "models/llama.h"
#include "models/lm_head.h"
#include "models/safetensors.h"
#include "models/vocab_resize.h"
#include "models/weight_source.h"
#include "parallel/tensor_slice.h"
#include "test_data_util.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "base/error.h"
#include "trainer/model_setup.h"
#include "trainer/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

const std::string kHf = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/";

std::string user_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const UserError& e) {
    return e.what();
  }
  return "(no error)";
}

// A tiny run on the data fixtures starting from the 96-token HF fixture `which`.
Config from_hf(const TempDir& dir, const std::string& which, std::vector<std::string> sets = {}) {
  for (const char* f : {"data.json", "pretrain.jsonl", "sft_firefly.jsonl"})
    if (!fs::exists(dir / f)) fs::copy_file(test::fixture(f), dir / f);
  std::string yaml = str("model: {init_from: 'hf:", kHf, which, "'}\ntokenizer: ", test::tokenizer_path(),
                         "\ndata: {mixture: ", dir / "data.json", ", seq_len: 32, prefetch: 1}\n",
                         "train: {run_dir: ", dir / "run",
                         ", steps: 1, micro_batch_size: 2, lr: 0.01, log_every: 100, threads: 1}\n");
  return parse_config(yaml, dir / "cfg.yaml", sets);
}

TEST(Vocab, TokenizerLargerThanTheModelIsRefusedWithOneLine) {
  TempDir dir;
  const Config cfg = from_hf(dir, "llama_linear");  // 96 rows; the test tokenizer has 700 pieces
  const std::string msg = user_error_of([&] { train(cfg); });
  EXPECT_NE(msg.find(test::tokenizer_path() + ": 700 pieces, more than model.vocab_size 96 (from " + kHf +
                     "llama_linear/config.json); set model.vocab_size: 700"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "run/checkpoints"));
}

TEST(Vocab, ExtendedVocabularyTrains) {
  TempDir dir;
  const Config cfg = from_hf(dir, "llama_linear", {"model.vocab_size=700"});
  TrainResult r = train(cfg);
  ASSERT_EQ(r.losses.size(), 1u);
  EXPECT_TRUE(std::isfinite(r.losses[0]));
  // The checkpoint holds the grown tensors.
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [n, shape] : checkpoint_tensors(latest_checkpoint(cfg.train.run_dir))) shapes[n] = shape;
  EXPECT_EQ(shapes["model.embed_tokens.weight"], (std::vector<int64_t>{700, 64}));
  EXPECT_EQ(shapes["lm_head.weight"], (std::vector<int64_t>{700, 64}));
}

// Old rows bit for bit, new rows the mean of the old ones (fp64 mean cast to the dtype).
void expect_resized(const at::Tensor& grown, const at::Tensor& old) {
  ASSERT_EQ(grown.size(1), old.size(1));
  const int64_t n = old.size(0);
  EXPECT_TRUE(grown.narrow(0, 0, n).equal(old));
  at::Tensor mean = old.to(at::kDouble).mean(0).to(old.scalar_type());
  EXPECT_TRUE(grown.narrow(0, n, grown.size(0) - n).equal(mean.unsqueeze(0).expand({grown.size(0) - n, -1})));
}

// The run's own path: model.init_from hf: with a larger model.vocab_size, a shape-only model
// filled from initial_weights() (the source every rank reads its share from).
std::map<std::string, at::Tensor> grown_weights(const TempDir& dir, const std::string& which,
                                                std::vector<std::string> sets) {
  sets.push_back("tokenizer=");
  sets.push_back("data.seq_len=8");
  Config cfg = from_hf(dir, which, sets);
  Llama model(cfg.model, LlamaBuild{StageSpec{}, {}, /*meta=*/true});
  materialize(*model, *initial_weights(cfg, *model));
  std::map<std::string, at::Tensor> out;
  for (const auto& item : model->named_parameters()) out[item.key()] = item.value().detach();
  return out;
}

TEST(Vocab, HfFixtureGrowsTo2000RowsTiedAndUntied) {
  TempDir dir;
  for (const char* which : {"llama_linear", "llama_dynamic_tied"}) {
    SCOPED_TRACE(which);
    ASSERT_EQ(read_hf_config(kHf + which).vocab_size, 96);
    std::map<std::string, at::Tensor> params = grown_weights(dir, which, {"model.vocab_size=2000"});
    HfWeights w(kHf + which);
    const bool tied = read_hf_config(kHf + which).tie_embeddings;
    EXPECT_EQ(params["model.embed_tokens.weight"].size(0), 2000);
    expect_resized(params["model.embed_tokens.weight"], w.tensor("model.embed_tokens.weight"));
    if (!tied) expect_resized(params["lm_head.weight"], w.tensor("lm_head.weight"));
    EXPECT_EQ(params.count("lm_head.weight"), tied ? 0u : 1u);
    // Other tensors untouched by the resize.
    EXPECT_TRUE(
        params["model.layers.0.mlp.up_proj.weight"].equal(w.tensor("model.layers.0.mlp.up_proj.weight")));
  }
  // The plain HF source (no growth) still insists on the file's shapes.
  ModelConfig mc = read_hf_config(kHf + "llama_linear");
  mc.vocab_size = 2000;
  Llama model(mc);
  TensorShapes names;
  for (const auto& item : model->named_parameters())
    names.emplace_back(item.key(), item.value().sizes().vec());
  EXPECT_NE(user_error_of([&] {
              hf_weight_source(kHf + "llama_linear", names);
            }).find("shape [96, 64] in the file, the model expects [2000, 64]"),
            std::string::npos);
  // Fewer rows than the checkpoint: refused, naming the tensor and both sizes.
  EXPECT_NE(
      user_error_of([&] {
        grown_weights(dir, "llama_linear", {"model.vocab_size=50"});
      }).find("has 96 rows, model.vocab_size gives 50; kiln extends vocabularies but never shrinks them"),
      std::string::npos);
}

// A rank reads a flat range of the grown tensor (its ZeRO-3 partition): whatever the range, the
// values are those of the whole tensor, also for the mean+covariance draw, and only the rows
// touched are computed.
TEST(Vocab, AnyFlatRangeOfAGrownTensorEqualsTheWholeTensor) {
  torch::manual_seed(11);
  const at::Tensor old = torch::randn({40, 8});
  for (const char* init : {"mean", "mean_cov", "zeros"}) {
    SCOPED_TRACE(init);
    const VocabResizeOptions opt{init, 3};
    const std::map<std::string, std::vector<int64_t>> stored = {{"lm_head.weight", {40, 8}}};
    auto whole_src = vocab_growth_source(tensors_source({{"lm_head.weight", old}}, "t"), stored, opt);
    const at::Tensor whole = whole_src->read_full("lm_head.weight", {100, 8});  // (100, 8)
    EXPECT_TRUE(whole.narrow(0, 0, 40).equal(old));
    if (std::string(init) == "zeros") {
      EXPECT_EQ(whole.narrow(0, 40, 60).abs().max().item<float>(), 0.0f);
    }
    for (auto [b, e] : std::vector<std::pair<int64_t, int64_t>>{{0, 800}, {317, 333}, {5, 450}, {700, 701}}) {
      auto src = vocab_growth_source(tensors_source({{"lm_head.weight", old}}, "t"), stored, opt);
      EXPECT_TRUE(src->read("lm_head.weight", {100, 8}, b, e).equal(whole.view({-1}).narrow(0, b, e - b)))
          << b << ".." << e;
    }
    // Two ranks' halves, as ZeRO-3 partitions them, cover it exactly.
    at::Tensor halves = at::cat({whole_src->read("lm_head.weight", {100, 8}, 0, 400),
                                 whole_src->read("lm_head.weight", {100, 8}, 400, 800)});
    EXPECT_TRUE(halves.equal(whole.view({-1})));
  }
}

TEST(Vocab, MeanPlusCovarianceDrawIsSeededPerRowAndUsableOnARowRange) {
  torch::manual_seed(5);
  const at::Tensor old = torch::randn({96, 16}) * 0.3 + 0.1;
  const VocabResizeOptions opt{"mean_cov", 7};
  const at::Tensor whole = resize_vocab_rows(old, 300, "model.embed_tokens.weight", opt);
  EXPECT_TRUE(whole.narrow(0, 0, 96).equal(old));
  // A row range (a rank's slice) equals the same rows of the whole tensor.
  EXPECT_TRUE(
      resize_vocab_rows(old, 300, "model.embed_tokens.weight", opt, 50, 210).equal(whole.narrow(0, 50, 160)));
  EXPECT_TRUE(resize_vocab_rows(old, 300, "model.embed_tokens.weight", opt, 200, 300)
                  .equal(whole.narrow(0, 200, 100)));
  // New rows: mean + L z with L L^T = 1e-9 * cov, z ~ N(0, I). Their spread around the mean is
  // therefore ~3e-5 of the old rows' spread: distinct rows, all next to the mean.
  at::Tensor mean = old.to(at::kDouble).mean(0);
  at::Tensor dev = whole.narrow(0, 96, 204).to(at::kDouble) - mean;
  const double ratio = dev.std().item<double>() / (old.to(at::kDouble) - mean).std().item<double>();
  EXPECT_GT(ratio, std::sqrt(1e-9) * 0.8);
  EXPECT_LT(ratio, std::sqrt(1e-9) * 1.25);
  EXPECT_FALSE(whole[100].equal(whole[101]));
  // Deterministic from the seed and the name; another seed or tensor draws other rows.
  EXPECT_TRUE(resize_vocab_rows(old, 300, "model.embed_tokens.weight", opt).equal(whole));
  EXPECT_FALSE(resize_vocab_rows(old, 300, "lm_head.weight", opt).equal(whole));
  EXPECT_FALSE(resize_vocab_rows(old, 300, "model.embed_tokens.weight", {"mean_cov", 8}).equal(whole));
  // Fewer old rows than columns: the covariance is singular, so the mean, as transformers does.
  const at::Tensor few = torch::randn({8, 16});
  at::Tensor grown = resize_vocab_rows(few, 12, "lm_head.weight", opt);
  EXPECT_TRUE(grown[11].equal(few.to(at::kDouble).mean(0).to(at::kFloat)));
  // Shrinking is refused, naming the key and both sizes.
  EXPECT_NE(user_error_of([&] {
              resize_vocab_rows(old, 50, "lm_head.weight", opt);
            }).find("model.vocab_size: 50 rows for 'lm_head.weight' is fewer than the checkpoint's 96"),
            std::string::npos);
}

TEST(Vocab, PaddingRowsAreNeverPredicted) {
  ModelConfig mc;
  mc.vocab_size = 90;
  mc.vocab_pad_to = 64;  // 128 rows
  mc.hidden_size = 32;
  mc.num_heads = 4;
  torch::manual_seed(3);
  Llama model(mc);
  EXPECT_EQ(model->embed_tokens->weight.size(0), 128);
  EXPECT_EQ(model->lm_head->weight.size(0), 128);
  Batch b;
  b.input_ids = torch::randint(0, 90, {2, 10}, torch::kLong);
  b.labels = torch::randint(0, 90, {2, 10}, torch::kLong);
  b.position_ids = torch::arange(10).repeat({2, 1});
  at::Tensor logits = model->forward(b);  // (2, 10, 128)
  ASSERT_EQ(logits.size(-1), 128);
  at::Tensor probs = logits.softmax(-1);
  EXPECT_EQ(probs.narrow(-1, 90, 38).abs().max().item<float>(), 0.0f);  // exactly no mass
  EXPECT_TRUE(logits.narrow(-1, 90, 38).isinf().all().item<bool>());
  EXPECT_NEAR(probs.narrow(-1, 0, 90).sum(-1).min().item<float>(), 1.0f, 1e-5);
  // The loss equals the loss over the real columns only, and no gradient reaches padding rows.
  at::Tensor loss = lm_loss_sum(logits, b.labels);
  at::Tensor real = lm_loss_sum(logits.narrow(-1, 0, 90).contiguous(), b.labels);
  EXPECT_NEAR(loss.item<double>(), real.item<double>(), 1e-4);
  loss.backward();
  EXPECT_EQ(model->lm_head->weight.grad().narrow(0, 90, 38).abs().max().item<float>(), 0.0f);
  EXPECT_GT(model->lm_head->weight.grad().narrow(0, 0, 90).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(mc.num_parameters(), [&] {
    int64_t n = 0;
    for (const auto& p : model->parameters()) n += p.numel();
    return n;
  }());
}

TEST(Vocab, ExportWritesTheRealVocabulary) {
  TempDir dir;
  ModelConfig mc = read_hf_config(kHf + "llama_linear");
  mc.vocab_size = 100;
  mc.vocab_pad_to = 64;  // 128 rows in the model
  Llama model(mc);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : model->named_parameters()) named.emplace_back(item.key(), item.value().detach());
  save_hf(named, mc, dir / "out");
  nlohmann::json j = nlohmann::json::parse(test::read_text(dir / "out/config.json"));
  EXPECT_EQ(j["vocab_size"], 100);
  SafetensorsFile st(dir / "out/model.safetensors");
  EXPECT_EQ(st.info("lm_head.weight").shape, (std::vector<int64_t>{100, 64}));
  EXPECT_TRUE(st.tensor("model.embed_tokens.weight").equal(model->embed_tokens->weight.narrow(0, 0, 100)));
  // Read back by kiln (init_from hf:) with padding again: the same logits on the real columns.
  Config back =
      parse_config(str("model: {init_from: 'hf:", dir / "out", "', vocab_pad_to: 64}\ndata: {seq_len: 16}\n"), dir / "c.yaml");
  Llama again(back.model, LlamaBuild{StageSpec{}, {}, /*meta=*/true});
  materialize(*again, *initial_weights(back, *again));
  EXPECT_EQ(again->lm_head->weight.size(0), 128);
  Batch b;
  b.input_ids = torch::randint(0, 100, {1, 8}, torch::kLong);
  b.labels = b.input_ids;
  b.position_ids = torch::arange(8).view({1, 8});
  at::NoGradGuard no_grad;
  EXPECT_TRUE(model->forward(b).narrow(-1, 0, 100).equal(again->forward(b).narrow(-1, 0, 100)));
}

TEST(Vocab, LoaderRefusesAStoreLargerThanTheModelAndIdsOutsideIt) {
  TempDir dir;
  Config cfg = from_hf(dir, "llama_linear");
  std::string msg = user_error_of([&] { DataLoader loader(cfg, 0, 1, 2); });
  EXPECT_NE(msg.find("manifest.json: 700 pieces, more than model.vocab_size 96"), std::string::npos) << msg;
  // A store whose ids pass its manifest but not the model: make_batch names the document.
  Config ok = from_hf(dir, "llama_linear", {"model.vocab_size=700"});
  DataLoader loader(ok, 0, 1, 2);
  Batch b = loader.next();
  EXPECT_LT(b.input_ids.max().item<int64_t>(), 700);
  TokenStore store(fs::path(ensure_prepared(ok, ok.data.mixture)).string());
  const int64_t len = std::min<int64_t>(store.sources()[0].doc_length(0), 20);
  std::vector<Row> rows = {{Piece{0, 0, len}}};
  msg = user_error_of([&] { make_batch(store, rows, 32, 0, /*vocab_size=*/5); });
  EXPECT_NE(msg.find("document 0 holds token id "), std::string::npos) << msg;
  EXPECT_NE(msg.find("outside the model's vocabulary [0, 5) (model.vocab_size)"), std::string::npos) << msg;
}

}  // namespace
}  // namespace kiln
