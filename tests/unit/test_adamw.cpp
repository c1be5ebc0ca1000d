// AdamW against the closed form of torch.optim.AdamW, element by element in double precision.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "models/llama.h"
#include "parallel/communicator.h"
#include "parallel/zero.h"
#include "tests/parallel/zero_run.h"

namespace kiln {
namespace {

TEST(AdamW, MatchesTheClosedFormOverSteps) {
  AdamWOptions h{/*weight_decay=*/0.1, /*beta1=*/0.9, /*beta2=*/0.95, /*eps=*/1e-8};
  at::Tensor master = at::tensor(std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f});
  at::Tensor mask = at::tensor(std::vector<float>{1, 1, 0, 0});  // the last two: no decay (norms)
  at::Tensor m = at::zeros({4}), v = at::zeros({4});
  std::vector<double> p = {1.0, -2.0, 0.5, 3.0}, em(4, 0), ev(4, 0);
  const double grads[3][4] = {{0.1, -0.2, 0.3, 0.0}, {-0.5, 0.4, 0.1, 2.0}, {0.05, 0.05, -0.3, -1.0}};
  const double lrs[3] = {1e-2, 5e-3, 2e-3}, scales[3] = {1.0, 0.5, 1.0};
  for (int t = 0; t < 3; ++t) {
    at::Tensor g = at::tensor(std::vector<float>(grads[t], grads[t] + 4));
    adamw_update(master, m, v, g, mask, lrs[t], scales[t], t + 1, h);
    for (int i = 0; i < 4; ++i) {
      const double gi = grads[t][i] * scales[t];
      p[i] *= 1 - lrs[t] * h.weight_decay * (i < 2 ? 1 : 0);
      em[i] = h.beta1 * em[i] + (1 - h.beta1) * gi;
      ev[i] = h.beta2 * ev[i] + (1 - h.beta2) * gi * gi;
      const double mhat = em[i] / (1 - std::pow(h.beta1, t + 1));
      const double vhat = ev[i] / (1 - std::pow(h.beta2, t + 1));
      p[i] -= lrs[t] * mhat / (std::sqrt(vhat) + h.eps);
      EXPECT_NEAR(master[i].item<double>(), p[i], 1e-6) << "step " << t + 1 << " element " << i;
      EXPECT_NEAR(m[i].item<double>(), em[i], 1e-7);
      EXPECT_NEAR(v[i].item<double>(), ev[i], 1e-7);
    }
  }
  // Element 3 had a zero first gradient and no decay: it moved only from step 2 on.
  EXPECT_NE(master[3].item<float>(), 3.0f);
}

// The decay mask of a real model: with zero gradients one AdamW step only decays, so every
// matrix (embeddings, projections, head) is multiplied by 1 - lr * weight_decay and every
// vector (the RMSNorm weights) is left exactly as it was; under ZeRO 0 and 3 alike.
TEST(AdamW, WeightDecayOnMatricesOnly) {
  for (int stage : {0, 3}) {
    test::ZeroRunSpec spec;
    const ModelConfig cfg = test::tiny_model_config(spec);
    at::manual_seed(1234);
    Llama model(cfg);
    model->reset_parameters();
    std::vector<std::pair<std::string, at::Tensor>> before;
    for (const auto& p : model->named_parameters()) before.emplace_back(p.key(), p.value().detach().clone());
    auto dp = make_world_communicator("auto", false, 5.0);
    ZeroOptimizer opt(*model, *dp, stage, spec.bucket_bytes, AdamWOptions{0.1, 0.9, 0.95, 1e-8});
    opt.zero_grad();
    Batch b = test::rows_of_step(0, 0, 2, spec, cfg.vocab_size);
    (lm_loss_sum(model->forward(b), b.labels) * 0.0).backward();  // every gradient exactly 0
    opt.reduce_gradients();
    opt.step(/*lr=*/0.5, /*grad_scale=*/1.0);
    const auto after = opt.gather_parameters();
    ASSERT_EQ(after.size(), before.size());
    int matrices = 0, vectors = 0;
    for (size_t i = 0; i < after.size(); ++i) {
      ASSERT_EQ(after[i].first, before[i].first);
      const at::Tensor& want = before[i].second;
      if (want.dim() >= 2) {
        ++matrices;
        EXPECT_TRUE(at::allclose(after[i].second, want * (1 - 0.5 * 0.1), 1e-6, 0)) << after[i].first;
      } else {
        ++vectors;
        EXPECT_TRUE(after[i].second.equal(want)) << after[i].first << " decayed (stage " << stage << ")";
      }
    }
    EXPECT_EQ(vectors, 2 * cfg.num_layers + 1);   // input + post-attention norms, final norm
    EXPECT_EQ(matrices, 7 * cfg.num_layers + 2);  // 7 per layer, embedding, untied head
  }
}

}  // namespace
}  // namespace kiln
