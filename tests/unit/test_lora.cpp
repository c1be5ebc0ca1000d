// The LoRA adapter against PEFT (tests/fixtures/peft/make_fixture.py): forward output and the
// gradients of A, B, the DoRA magnitude and the input, for LoRA, rsLoRA, DoRA and both with
// dropout (PEFT's nn.Dropout seeded with kiln's mask seed), fp32 on the CPU, 1e-5 relative.
// Then the properties PEFT cannot check: masks reproducible per (seed, step, micro-batch, name)
// and identical under activation recomputation, PEFT's init, an NF4 base, LoRA+ groups.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <sstream>
#include <string>

#include "models/lora.h"
#include "models/nf4.h"
#include "models/recompute.h"
#include "models/safetensors.h"

namespace kiln {
namespace {

const std::string kFixture = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/peft/linear.safetensors";

// ||a - b|| / ||b|| within tol, and the same shape.
void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what, double tol = 1e-5) {
  ASSERT_TRUE(a.defined()) << what << " undefined";
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  double rel = ((a - b).norm() / b.norm().clamp_min(1e-30)).item<double>();
  EXPECT_LE(rel, tol) << what << ": relative error " << rel;
}

struct Case {
  int64_t r;
  double alpha, dropout;
  bool rslora, dora;
};

Case read_case(const SafetensorsFile& f, const std::string& name) {
  std::istringstream in(f.metadata().at(name + ".config"));
  Case c;
  int rs, d;
  in >> c.r >> c.alpha >> c.dropout >> rs >> d;
  c.rslora = rs, c.dora = d;
  return c;
}

std::shared_ptr<LoraDropoutClock> fixture_clock(const SafetensorsFile& f, std::string* name) {
  std::istringstream in(f.metadata().at("dropout_clock"));
  auto clock = std::make_shared<LoraDropoutClock>();
  in >> clock->seed >> clock->step >> clock->micro_batch >> *name;
  return clock;
}

class LoraPeft : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraPeft, ForwardAndBackwardEqualPeft) {
  SafetensorsFile f(kFixture);
  const std::string n = GetParam();
  Case c = read_case(f, n);
  std::string proj;
  auto clock = fixture_clock(f, &proj);
  at::Tensor w = f.tensor(n + ".weight"), bias = f.tensor(n + ".bias");
  LoraAdapter lora(LoraOptions(w.size(1), w.size(0), c.r)
                       .alpha(c.alpha)
                       .dropout(c.dropout)
                       .rslora(c.rslora)
                       .dora(c.dora)
                       .name(proj));
  lora->set_dropout_clock(clock);
  lora->train(c.dropout > 0);
  LoraBase base{w, nullptr, bias};
  {
    torch::NoGradGuard no_grad;
    lora->lora_A.copy_(f.tensor(n + ".lora_A"));
    lora->lora_B.copy_(f.tensor(n + ".lora_B"));
  }
  if (c.dora) {
    lora->init_magnitude(base);  // PEFT's magnitude for these A, B
    expect_close(lora->lora_magnitude_vector, f.tensor(n + ".magnitude_init"), n + " magnitude init", 1e-6);
    torch::NoGradGuard no_grad;
    lora->lora_magnitude_vector.copy_(f.tensor(n + ".magnitude"));
  }
  at::Tensor x = f.tensor(n + ".x").clone().requires_grad_(true);
  at::Tensor y = lora->forward(x, torch::nn::functional::linear(x, w, bias), base);
  expect_close(y, f.tensor(n + ".y"), n + " output");
  (y * f.tensor(n + ".g")).sum().backward();
  expect_close(lora->lora_A.grad(), f.tensor(n + ".grad.lora_A"), n + " grad A");
  expect_close(lora->lora_B.grad(), f.tensor(n + ".grad.lora_B"), n + " grad B");
  expect_close(x.grad(), f.tensor(n + ".grad.x"), n + " grad x");
  if (c.dora)
    expect_close(lora->lora_magnitude_vector.grad(), f.tensor(n + ".grad.magnitude"), n + " grad m");
}

INSTANTIATE_TEST_SUITE_P(Cases, LoraPeft,
                         ::testing::Values("lora", "rslora", "dora", "lora_dropout", "dora_dropout"));

TEST(Lora, DropoutSeedIsTheFixturesAndScalingIsPeftS) {
  SafetensorsFile f(kFixture);
  std::string name;
  auto clock = fixture_clock(f, &name);
  EXPECT_EQ(std::to_string(lora_dropout_seed(*clock, name)), f.metadata().at("dropout_seed"));
  EXPECT_DOUBLE_EQ(LoraAdapter(LoraOptions(8, 8, 4).alpha(8))->scaling(), 2.0);
  EXPECT_DOUBLE_EQ(LoraAdapter(LoraOptions(8, 8, 4).alpha(8).rslora(true))->scaling(), 4.0);
}

// A fresh adapter with the same clock draws the same mask (a resumed run); the step, the
// micro-batch and the adapter's name each change it.
TEST(Lora, DropoutMaskIsAFunctionOfSeedStepMicroBatchAndName) {
  auto clock = std::make_shared<LoraDropoutClock>(LoraDropoutClock{42, 10, 1});
  auto make = [&](const std::string& name) {
    LoraAdapter a(LoraOptions(64, 8, 2).dropout(0.3).name(name));
    a->set_dropout_clock(clock);
    return a;
  };
  at::Tensor x = torch::randn({4, 16, 64});
  at::Tensor m1 = make("model.layers.0.mlp.up_proj")->dropout_mask(x);
  EXPECT_TRUE(torch::equal(m1, make("model.layers.0.mlp.up_proj")->dropout_mask(x)));
  EXPECT_FALSE(torch::equal(m1, make("model.layers.1.mlp.up_proj")->dropout_mask(x)));
  clock->micro_batch = 2;
  EXPECT_FALSE(torch::equal(m1, make("model.layers.0.mlp.up_proj")->dropout_mask(x)));
  clock->micro_batch = 1, clock->step = 11;
  EXPECT_FALSE(torch::equal(m1, make("model.layers.0.mlp.up_proj")->dropout_mask(x)));
  clock->step = 10;
  EXPECT_TRUE(torch::equal(m1, make("model.layers.0.mlp.up_proj")->dropout_mask(x)));
  // torch.nn.Dropout's values: 0 or 1 / (1 - p), kept with probability 1 - p.
  at::Tensor kept = m1.ne(0);
  EXPECT_TRUE(torch::allclose(m1.masked_select(kept), torch::full({1}, 1 / 0.7f)));
  EXPECT_NEAR(kept.to(at::kFloat).mean().item<float>(), 0.7, 0.02);
}

// Under activation recomputation the adapter runs twice (forward without grad, again in backward);
// the same mask both times gives exactly the gradients of the plain run.
TEST(Lora, RecomputeRedrawsTheSameMask) {
  auto clock = std::make_shared<LoraDropoutClock>(LoraDropoutClock{7, 3, 0});
  torch::manual_seed(5);
  at::Tensor w = torch::randn({12, 20}) * 0.2;
  for (bool dora : {false, true}) {
    LoraAdapter a(LoraOptions(20, 12, 4).dropout(0.5).dora(dora).name("p"));
    {
      torch::NoGradGuard no_grad;
      a->lora_B.normal_(0, 0.2);
    }
    if (dora) a->init_magnitude({w, nullptr, {}});
    a->set_dropout_clock(clock);
    a->train();
    LoraBase base{w, nullptr, {}};
    auto run = [&](bool recomputed) {
      a->zero_grad();
      at::Tensor x = torch::randn({3, 6, 20}, at::TensorOptions().dtype(at::kFloat)).requires_grad_(true);
      {
        torch::NoGradGuard no_grad;
        x.copy_(at::linspace(-1, 1, x.numel()).view(x.sizes()));
      }
      auto fn = [&](const std::vector<at::Tensor>& in) {
        return a->forward(in[0], torch::nn::functional::linear(in[0], w), base);
      };
      at::Tensor y = recomputed ? recompute({x}, fn) : fn({x});
      y.pow(2).sum().backward();
      return std::make_pair(a->lora_A.grad().clone(), x.grad().clone());
    };
    auto plain = run(false), again = run(true);
    EXPECT_TRUE(torch::equal(plain.first, again.first)) << "dora " << dora;
    EXPECT_TRUE(torch::equal(plain.second, again.second)) << "dora " << dora;
  }
}

TEST(Lora, EvalModeHasNoDropout) {
  LoraAdapter a(LoraOptions(16, 8, 2).dropout(0.5).name("p"));
  {
    torch::NoGradGuard no_grad;
    a->lora_B.normal_();
  }
  a->eval();  // no clock needed either
  at::Tensor x = torch::randn({2, 16});
  at::Tensor y = a->forward(x, torch::zeros({2, 8}));
  EXPECT_TRUE(torch::allclose(y, at::linear(at::linear(x, a->lora_A), a->lora_B) * a->scaling()));
}

TEST(Lora, InitIsPeftsKaimingUniformAndZeroB) {
  LoraAdapter a(LoraOptions(48, 10, 8));
  const double bound = 1 / std::sqrt(48.0);
  EXPECT_LE(a->lora_A.abs().max().item<double>(), bound * (1 + 1e-6));
  EXPECT_GT(a->lora_A.abs().max().item<double>(), bound * 0.9);
  EXPECT_TRUE(torch::equal(a->lora_B, torch::zeros({10, 8})));
  // Deterministic given the generator: the draw is uniform_(-bound, bound) from it.
  a->reset_parameters(at::detail::createCPUGenerator(9));
  at::Tensor want = torch::empty({8, 48}).uniform_(-bound, bound, at::detail::createCPUGenerator(9));
  EXPECT_TRUE(torch::allclose(a->lora_A, want, 0, 1e-7));
  LoraAdapter g(LoraOptions(256, 10, 64).init("gaussian"));
  EXPECT_NEAR(g->lora_A.std().item<double>(), 1.0 / 64, 1e-3);
  // The adapter's parameters are exactly PEFT's: A, B, and the magnitude with DoRA.
  EXPECT_EQ(a->named_parameters().keys(), (std::vector<std::string>{"lora_A", "lora_B"}));
  LoraAdapter d(LoraOptions(8, 4, 2).dora(true));
  EXPECT_EQ(d->named_parameters().keys(),
            (std::vector<std::string>{"lora_A", "lora_B", "lora_magnitude_vector"}));
}

// A QLoRA base: the adapter over an Nf4Weight equals the adapter over its dequantized weight,
// DoRA and the dropout branch (which recomputes W x' through nf4_linear) included.
TEST(Lora, Nf4BaseEqualsItsDequantizedDenseBase) {
  torch::manual_seed(11);
  Nf4Weight q = nf4_quantize(torch::randn({16, 64}) * 0.1, /*double_quant=*/true);
  at::Tensor dense = nf4_dequantize(q, at::kFloat);
  auto clock = std::make_shared<LoraDropoutClock>(LoraDropoutClock{1, 2, 3});
  LoraAdapter a(LoraOptions(64, 16, 4).dora(true).dropout(0.2).name("p"));
  {
    torch::NoGradGuard no_grad;
    a->lora_B.normal_(0, 0.1);
  }
  a->init_magnitude({{}, &q, {}});
  at::Tensor m_nf4 = a->lora_magnitude_vector.detach().clone();
  a->init_magnitude({dense, nullptr, {}});
  EXPECT_TRUE(torch::allclose(m_nf4, a->lora_magnitude_vector, 1e-6, 1e-7));
  a->set_dropout_clock(clock);
  a->train();
  at::Tensor x1 = torch::randn({2, 3, 64}).requires_grad_(true);
  at::Tensor x2 = x1.detach().clone().requires_grad_(true);
  at::Tensor y1 = a->forward(x1, nf4_linear(x1, q), {{}, &q, {}});
  at::Tensor y2 = a->forward(x2, at::linear(x2, dense), {dense, nullptr, {}});
  EXPECT_TRUE(torch::allclose(y1, y2, 1e-5, 1e-6));
  y1.sum().backward();
  y2.sum().backward();
  EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-5, 1e-6));
}

TEST(Lora, LoraPlusScalesBAndMagnitude) {
  LoraAdapter d(LoraOptions(8, 4, 2).dora(true));
  EXPECT_EQ(d->role("lora_A"), LoraRole::A);
  EXPECT_EQ(d->role("lora_B"), LoraRole::B);
  EXPECT_EQ(d->role("lora_magnitude_vector"), LoraRole::Magnitude);
  EXPECT_DOUBLE_EQ(lora_plus_lr_scale(LoraRole::A, 16), 1.0);
  EXPECT_DOUBLE_EQ(lora_plus_lr_scale(LoraRole::B, 16), 16.0);
  EXPECT_DOUBLE_EQ(lora_plus_lr_scale(LoraRole::Magnitude, 16), 16.0);  // PEFT: 1-D params go with B
}

}  // namespace
}  // namespace kiln
