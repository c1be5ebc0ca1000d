// The chunked linear + cross-entropy (models/ops/linear_cross_entropy.h) against the ATen
// composite it replaces: loss and both gradients, fp32 within 1e-5, on random inputs of several
// shapes, with ignored targets, token weights, chunks that do not divide the tokens, and without
// grad mode; and a model's forward_loss through it against its logits + lm_loss_sum.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "models/llama.h"
#include "models/ops/linear_cross_entropy.h"

namespace kiln {
namespace {

struct Case {
  int64_t N, h, V, chunk;
  bool weighted;
};

void expect_close(const at::Tensor& a, const at::Tensor& b, double tol, const char* what) {
  const double scale = std::max(1.0, b.abs().max().item<double>());
  EXPECT_LE((a - b).abs().max().item<double>(), tol * scale) << what;
}

TEST(LinearCrossEntropy, EqualsATenForwardAndBackward) {
  const Case cases[] = {{7, 5, 11, 3, false},
                        {64, 32, 100, 0, true},
                        {130, 48, 257, 64, false},
                        {33, 16, 4000, 10, true},
                        {1, 8, 3, 0, false}};
  for (const Case& c : cases) {
    at::manual_seed(c.N * 31 + c.V);
    at::Tensor hidden = at::randn({c.N, c.h}).requires_grad_();
    at::Tensor weight = (at::randn({c.V, c.h}) * 0.3).requires_grad_();
    at::Tensor targets = at::randint(0, c.V, {c.N}, at::kLong);
    // About a quarter of the tokens carry no loss.
    targets.masked_fill_(at::rand({c.N}) < 0.25, -100);
    at::Tensor tw = c.weighted ? at::rand({c.N}) : at::Tensor();
    at::Tensor upstream = at::tensor(0.37f);

    at::Tensor ref = linear_cross_entropy_sum_reference(hidden, weight, targets, tw);
    auto ref_grads = torch::autograd::grad({ref * upstream}, {hidden, weight});
    at::Tensor got = linear_cross_entropy_sum(hidden, weight, targets, tw, -100, c.chunk);
    auto got_grads = torch::autograd::grad({got * upstream}, {hidden, weight});

    SCOPED_TRACE(testing::Message() << "N " << c.N << " h " << c.h << " V " << c.V << " chunk " << c.chunk);
    EXPECT_EQ(got.scalar_type(), at::kFloat);
    expect_close(got, ref, 1e-5, "loss");
    expect_close(got_grads[0], ref_grads[0], 1e-5, "grad hidden");
    expect_close(got_grads[1], ref_grads[1], 1e-5, "grad weight");
    {
      at::NoGradGuard no_grad;  // evaluation: the loss alone
      expect_close(linear_cross_entropy_sum(hidden, weight, targets, tw, -100, c.chunk), ref, 1e-5,
                   "no-grad loss");
    }
  }
}

TEST(LinearCrossEntropy, AllTargetsIgnoredIsZeroWithZeroGradients) {
  at::Tensor hidden = at::randn({6, 4}).requires_grad_();
  at::Tensor weight = at::randn({9, 4}).requires_grad_();
  at::Tensor loss = linear_cross_entropy_sum(hidden, weight, at::full({6}, -100, at::kLong));
  loss.backward();
  EXPECT_EQ(loss.item<float>(), 0.0f);
  EXPECT_EQ(hidden.grad().abs().max().item<float>(), 0.0f);
  EXPECT_EQ(weight.grad().abs().max().item<float>(), 0.0f);
}

// The model's forward_loss (which takes the chunked op for a dense head) against its logits
// (forward) and lm_loss_sum / lm_loss_weighted_sum, with a padded vocabulary.
TEST(LinearCrossEntropy, ModelLossEqualsLogitsPath) {
  ModelConfig cfg;
  cfg.vocab_size = 61;
  cfg.vocab_pad_to = 16;  // padded to 64: the head's extra rows must take no part
  cfg.hidden_size = 32;
  cfg.num_layers = 2;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.max_seq_len = 16;
  for (bool tied : {false, true}) {
    cfg.tie_embeddings = tied;
    at::manual_seed(3);
    Llama model(cfg);
    Batch b;
    b.input_ids = at::randint(0, cfg.vocab_size, {2, 12}, at::kLong);
    b.labels = at::randint(0, cfg.vocab_size, {2, 12}, at::kLong);
    b.labels.index_put_({0, at::indexing::Slice(0, 5)}, -100);
    b.position_ids = at::arange(12).repeat({2, 1});
    at::Tensor tw = at::rand({2, 12});
    for (bool weighted : {false, true}) {
      SCOPED_TRACE(testing::Message() << "tied " << tied << " weighted " << weighted);
      model->zero_grad();
      at::Tensor ref = weighted ? lm_loss_weighted_sum(model->forward(b), b.labels, tw)
                                : lm_loss_sum(model->forward(b), b.labels);
      ref.backward();
      std::vector<at::Tensor> ref_grads;
      for (const auto& p : model->parameters()) ref_grads.push_back(p.grad().clone());
      model->zero_grad();
      at::Tensor got = model->forward_loss(b, weighted ? tw : at::Tensor());
      got.backward();
      expect_close(got, ref, 1e-5, "loss");
      size_t i = 0;
      for (const auto& p : model->parameters())
        expect_close(p.grad(), ref_grads[i++], 1e-5, "parameter gradient");
    }
  }
}

}  // namespace
}  // namespace kiln
