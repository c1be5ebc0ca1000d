// Sampling for `kiln generate`: the filtered softmax of temperature, top_k and top_p against its
// closed form written out here, seeded draws against that distribution, top_k = 1 and a tiny
// top_p equal to greedy, and generate_text wired to them.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "test_train_util.h"
#include "trainer/config.h"
#include "trainer/sampling.h"
#include "trainer/trainer.h"

namespace kiln {
namespace {

GenerateConfig gen(double temperature, int64_t top_k, double top_p) {
  GenerateConfig g;
  g.temperature = temperature;
  g.top_k = top_k;
  g.top_p = top_p;
  return g;
}

// The closed form, one token at a time: scores l / T; the k highest kept; softmax; then, in
// order of probability, a token kept while the mass before it is below top_p; renormalized.
std::vector<double> filtered_softmax(const std::vector<double>& l, double T, int64_t k, double top_p) {
  const size_t V = l.size();
  std::vector<size_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return l[a] > l[b]; });
  const size_t keep_k = k > 0 ? std::min<size_t>(k, V) : V;
  std::vector<double> p(V, 0.0);
  double z = 0;
  for (size_t i = 0; i < keep_k; ++i) z += std::exp(l[order[i]] / T);
  for (size_t i = 0; i < keep_k; ++i) p[order[i]] = std::exp(l[order[i]] / T) / z;
  if (top_p < 1) {
    double before = 0, kept = 0;
    for (size_t i = 0; i < V; ++i) {
      const double pi = p[order[i]];
      if (i > 0 && before >= top_p) p[order[i]] = 0;
      before += pi;
      kept += p[order[i]];
    }
    for (double& x : p) x /= kept;
  }
  return p;
}

const std::vector<double> kLogits = {1.0, 3.0, -0.5, 2.2, 0.3, 2.9, -2.0, 1.7};

struct Case {
  double T;
  int64_t k;
  double p;
};
const std::vector<Case> kCases = {{1.0, 0, 1.0},  {0.5, 0, 1.0}, {2.0, 3, 1.0},
                                  {1.0, 0, 0.75}, {1.5, 5, 0.6}, {0.8, 4, 0.9}};

TEST(Sampling, ProbabilitiesAreTheFilteredSoftmax) {
  const at::Tensor logits = at::tensor(kLogits, at::kDouble).to(at::kFloat);
  for (const Case& c : kCases) {
    const std::vector<double> want = filtered_softmax(kLogits, c.T, c.k, c.p);
    const at::Tensor got = next_token_probs(logits, gen(c.T, c.k, c.p)).to(at::kDouble).contiguous();
    ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
    int64_t zeros = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_NEAR(got[i].item<double>(), want[i], 1e-6) << "T " << c.T << " k " << c.k << " p " << c.p;
      zeros += want[i] == 0;
    }
    // The cases really filter: top_k = 3 keeps 3, top_p = 0.75 at T 1 keeps {3.0, 2.9, 2.2}.
    if (c.k == 3 || c.p == 0.75) {
      EXPECT_EQ(zeros, 5);
    }
  }
  // By hand: T = 2, top_k = 3 is the softmax of {3.0, 2.9, 2.2} / 2.
  const double z = std::exp(1.5) + std::exp(1.45) + std::exp(1.1);
  const at::Tensor k3 = next_token_probs(logits, gen(2.0, 3, 1.0));
  EXPECT_NEAR(k3[1].item<double>(), std::exp(1.5) / z, 1e-6);
  EXPECT_NEAR(k3[3].item<double>(), std::exp(1.1) / z, 1e-6);
  EXPECT_EQ(k3[7].item<double>(), 0.0);
}

TEST(Sampling, SeededDrawsFollowTheFilteredSoftmax) {
  const at::Tensor logits = at::tensor(kLogits, at::kDouble).to(at::kFloat);
  const int n = 1500;
  for (const Case& c : kCases) {
    const std::vector<double> want = filtered_softmax(kLogits, c.T, c.k, c.p);
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(/*seed_in=*/1000 + c.k);
    std::vector<int> count(want.size(), 0);
    for (int i = 0; i < n; ++i) ++count[next_token(logits, gen(c.T, c.k, c.p), g)];
    for (size_t t = 0; t < want.size(); ++t) {
      if (want[t] == 0) {
        EXPECT_EQ(count[t], 0) << "filtered token " << t << " drawn (T " << c.T << " k " << c.k << " p "
                               << c.p << ")";
        continue;
      }
      // Binomial(n, p): 5 standard deviations.
      const double mean = n * want[t], sd = std::sqrt(n * want[t] * (1 - want[t]));
      EXPECT_NEAR(count[t], mean, 5 * sd + 1)
          << "token " << t << " T " << c.T << " k " << c.k << " p " << c.p;
    }
  }
}

TEST(Sampling, TopKOneAndATinyTopPAreGreedy) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(/*seed_in=*/5);
  int differs = 0;
  for (int i = 0; i < 200; ++i) {
    // Near-uniform logits at a high temperature: an unfiltered draw is rarely the argmax.
    const at::Tensor logits = at::randn({50}, g) * 0.1;
    const int64_t greedy = next_token(logits, gen(0.0, 0, 1.0));
    EXPECT_EQ(greedy, logits.argmax().item<int64_t>());
    EXPECT_EQ(next_token(logits, gen(5.0, 1, 1.0), g), greedy) << i;
    EXPECT_EQ(next_token(logits, gen(5.0, 0, 1e-6), g), greedy) << i;
    EXPECT_EQ(next_token(logits, gen(5.0, 7, 1e-6), g), greedy) << i;
    differs += next_token(logits, gen(5.0, 0, 1.0), g) != greedy;
  }
  EXPECT_GT(differs, 150);  // the unfiltered draw is a draw: about 49 in 50 differ
}

// generate_text draws with these filters: with top_k 1 or a tiny top_p its text is the greedy
// text, and without them it is not (the seeded initial model is near uniform over 700 pieces).
TEST(Sampling, GenerateUsesTheFilters) {
  test::TempDir dir;
  auto text = [&](std::vector<std::string> sets) {
    sets.push_back("generate.max_new_tokens=12");
    return generate_text(test::tiny_config(dir, "run", sets), "the quick brown fox");
  };
  const std::string greedy = text({});
  ASSERT_FALSE(greedy.empty());
  EXPECT_EQ(text({"generate.temperature=3", "generate.top_k=1"}), greedy);
  EXPECT_EQ(text({"generate.temperature=3", "generate.top_p=0.000001"}), greedy);
  const std::string sampled = text({"generate.temperature=3"});
  EXPECT_NE(sampled, greedy);
  EXPECT_EQ(text({"generate.temperature=3"}), sampled);  // seeded by train.seed
  EXPECT_NE(text({"generate.temperature=3", "train.seed=99"}), sampled);
}

}  // namespace
}  // namespace kiln
