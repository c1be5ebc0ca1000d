// The decoder on its own: packed documents never attend to each other, recomputation gives
// the same gradients, RoPE scaling and ALiBi slopes in closed form.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "models/llama.h"
#include "models/recompute.h"

namespace kiln {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.max_seq_len = 64;
  return c;
}

Batch row(const std::vector<int64_t>& ids, const std::vector<int64_t>& pos, bool packed) {
  const int64_t T = static_cast<int64_t>(ids.size());
  Batch b;
  b.input_ids = at::tensor(ids, at::kLong).view({1, T});
  b.position_ids = at::tensor(pos, at::kLong).view({1, T});
  b.labels = at::full({1, T}, kIgnoreIndex, at::kLong);
  b.packed = packed;
  return b;
}

void expect_no_cross_attention(const ModelConfig& cfg) {
  at::manual_seed(0);
  Llama model(cfg);
  at::NoGradGuard no_grad;
  const std::vector<int64_t> a = {3, 9, 4, 22, 7}, b = {11, 5, 40, 2, 8, 31, 6};
  std::vector<int64_t> ids(a), pos;
  ids.insert(ids.end(), b.begin(), b.end());
  for (size_t i = 0; i < a.size(); ++i) pos.push_back(static_cast<int64_t>(i));
  for (size_t i = 0; i < b.size(); ++i) pos.push_back(static_cast<int64_t>(i));
  std::vector<int64_t> b_pos(pos.begin() + a.size(), pos.end());

  at::Tensor packed = model->forward(row(ids, pos, true)).narrow(1, a.size(), b.size());
  at::Tensor alone = model->forward(row(b, b_pos, false));
  EXPECT_LT((packed - alone).abs().max().item<double>(), 1e-5);

  // Changing sample 1 leaves sample 2's logits untouched.
  std::vector<int64_t> other(ids);
  for (size_t i = 0; i < a.size(); ++i) other[i] = (other[i] * 7 + 1) % cfg.vocab_size;
  at::Tensor changed = model->forward(row(other, pos, true)).narrow(1, a.size(), b.size());
  EXPECT_LT((changed - packed).abs().max().item<double>(), 1e-6);
  // ... while without the packed flag sample 2 does see sample 1 (the test can fail).
  at::Tensor leaky = model->forward(row(other, pos, false)).narrow(1, a.size(), b.size());
  at::Tensor leaky_orig = model->forward(row(ids, pos, false)).narrow(1, a.size(), b.size());
  EXPECT_GT((leaky - leaky_orig).abs().max().item<double>(), 1e-4);
}

TEST(Model, PackedSamplesDoNotAttendToEachOther) { expect_no_cross_attention(tiny_config()); }

TEST(Model, PackedSamplesDoNotAttendToEachOtherWithAlibi) {
  ModelConfig c = tiny_config();
  c.position = Position::alibi;
  expect_no_cross_attention(c);
}

std::vector<at::Tensor> grads_of(Llama& model, const Batch& b) {
  for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
  at::Tensor logits = model->forward(b);
  lm_loss_sum(logits, b.labels).backward();
  std::vector<at::Tensor> g;
  for (auto& p : model->parameters()) g.push_back(p.grad().clone());
  return g;
}

TEST(Model, RecomputationGivesTheSameGradients) {
  at::manual_seed(1);
  Llama model(tiny_config());
  Batch b = row({1, 2, 3, 4, 5, 6, 7, 8}, {0, 1, 2, 3, 0, 1, 2, 3}, true);
  b.labels = at::tensor(std::vector<int64_t>{2, 3, 4, -100, 6, 7, 8, -100}, at::kLong).view({1, 8});
  std::vector<at::Tensor> plain = grads_of(model, b);

  model->set_unit_runner(
      [](int64_t unit, const at::Tensor& x, const std::function<at::Tensor(const at::Tensor&)>& fn) {
        if (unit == 0 || unit == 3) return fn(x);
        auto f = fn;
        return recompute({x}, [f](const std::vector<at::Tensor>& in) { return f(in[0]); });
      });
  std::vector<at::Tensor> full = grads_of(model, b);
  model->set_unit_runner(nullptr);
  for (auto& layer : model->layers) layer->self_attn->recompute_core = true;
  std::vector<at::Tensor> selective = grads_of(model, b);
  ASSERT_EQ(plain.size(), full.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_TRUE(plain[i].abs().sum().item<double>() > 0);
    EXPECT_LT((plain[i] - full[i]).abs().max().item<double>(), 1e-6) << "full, parameter " << i;
    EXPECT_LT((plain[i] - selective[i]).abs().max().item<double>(), 1e-6) << "selective, parameter " << i;
  }
}

TEST(Model, LinearRopeScalingStretchesPositions) {
  ModelConfig none = tiny_config(), linear = tiny_config();
  linear.rope_scaling.type = RopeType::linear;
  linear.rope_scaling.factor = 2.0;
  RopeTables a = rope_tables(none, 32, at::kFloat), b = rope_tables(linear, 64, at::kFloat);
  for (int64_t p : {0, 3, 10, 31}) EXPECT_LT((b.cos[2 * p] - a.cos[p]).abs().max().item<double>(), 1e-5) << p;
}

TEST(Model, DynamicNtkLeavesShortSequencesAlone) {
  ModelConfig none = tiny_config(), dyn = tiny_config();
  dyn.rope_scaling.type = RopeType::dynamic;
  dyn.rope_scaling.factor = 4.0;
  EXPECT_TRUE(at::allclose(rope_inv_freq(dyn, 32), rope_inv_freq(none, 32)));
  // Longer than the original context: the base grows by (f*L/M - (f-1))^(d/(d-2)).
  const int64_t d = none.head_dim();
  const double base = 10000.0 * std::pow(4.0 * 128 / 64 - 3, double(d) / (d - 2));
  EXPECT_NEAR(rope_inv_freq(dyn, 128)[1].item<double>(), 1.0 / std::pow(base, 2.0 / d), 1e-7);  // fp32
}

TEST(Model, AlibiSlopesAreGeometric) {
  at::Tensor s = alibi_slopes(8);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(s[i].item<float>(), std::pow(2.0f, -(i + 1)));
  at::Tensor s12 = alibi_slopes(12);  // 8 from the power of two, then every other of 16's
  EXPECT_FLOAT_EQ(s12[8].item<float>(), std::pow(2.0f, -0.5f));
  EXPECT_FLOAT_EQ(s12[9].item<float>(), std::pow(2.0f, -1.5f));
}

TEST(Model, ParameterCountMatchesModules) {
  ModelConfig c = tiny_config();
  for (bool tied : {false, true}) {
    c.tie_embeddings = tied;
    Llama model(c);
    int64_t n = 0;
    for (auto& p : model->parameters()) n += p.numel();
    EXPECT_EQ(n, c.num_parameters()) << "tied " << tied;
  }
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

TEST(Recompute, MatchesDirectGradientsForInputsAndCapturedTensors) {
  at::manual_seed(3);
  at::Tensor w = at::randn({4, 4}).requires_grad_(true);
  at::Tensor x0 = at::randn({2, 4}).requires_grad_(true);
  auto f = [w](const std::vector<at::Tensor>& in) { return at::tanh(at::matmul(in[0], w)) * in[1]; };
  at::Tensor scale = at::randn({2, 4}).requires_grad_(true);

  at::Tensor y = f({x0 * 2, scale}).pow(2).sum();
  y.backward();
  at::Tensor gw = w.grad().clone(), gx = x0.grad().clone(), gs = scale.grad().clone();
  w.mutable_grad() = at::Tensor();
  x0.mutable_grad() = at::Tensor();
  scale.mutable_grad() = at::Tensor();

  at::Tensor y2 = recompute({x0 * 2, scale}, f).pow(2).sum();
  y2.backward();
  EXPECT_TRUE(at::allclose(w.grad(), gw));
  EXPECT_TRUE(at::allclose(x0.grad(), gx));
  EXPECT_TRUE(at::allclose(scale.grad(), gs));
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// The rotary tables are cached across forwards; a cache filled by a shorter (or, for dynamic NTK,
// differently scaled) batch must give exactly what a fresh model computes.
TEST(Model, CachedRopeTablesEqualFreshOnes) {
  for (RopeType type : {RopeType::none, RopeType::linear, RopeType::dynamic}) {
    ModelConfig c = tiny_config();
    c.max_seq_len = 16;  // dynamic NTK grows the base past 16 positions
    c.rope_scaling.type = type;
    c.rope_scaling.factor = 2.0;
    std::vector<int64_t> short_ids(6), long_ids(40), short_pos(6), long_pos(40);
    for (int64_t i = 0; i < 40; ++i) long_ids[i] = (i * 7) % 50, long_pos[i] = i;
    for (int64_t i = 0; i < 6; ++i) short_ids[i] = (i * 3) % 50, short_pos[i] = i;
    at::manual_seed(5);
    Llama warm(c);
    at::manual_seed(5);
    Llama fresh_long(c);
    at::manual_seed(5);
    Llama fresh_short(c);
    at::NoGradGuard no_grad;
    at::Tensor a = warm->forward(row(short_ids, short_pos, false));
    at::Tensor b = warm->forward(row(long_ids, long_pos, false));
    at::Tensor a2 = warm->forward(row(short_ids, short_pos, false));
    EXPECT_TRUE(b.equal(fresh_long->forward(row(long_ids, long_pos, false)))) << type;
    EXPECT_TRUE(a.equal(a2)) << type;
    EXPECT_TRUE(a2.equal(fresh_short->forward(row(short_ids, short_pos, false)))) << type;
  }
}

}  // namespace
}  // namespace kiln
