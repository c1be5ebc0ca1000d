// LoRA under tensor parallel (models/lora.h, models/lora_projection.h): adapters on every linear
// projection of a tensor-parallel model, with the world as the tp group (np 2 and 4), against the
// one-rank LoRA model with the same global base and adapter weights. The loss, the logits and
// every gradient (each rank's slice of the reference gradient: B's rows on a column-parallel
// base, A's columns on a row-parallel one, the whole A / B elsewhere) agree, with dropout drawn
// by the same clock, for LoRA, rsLoRA and DoRA, split and shared kv heads, sequence parallel and
// packed rows. A DoRA magnitude initialised from a tp model's base is the one-rank model's.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>

#include "models/llama.h"
#include "models/lora_projection.h"
#include "models/tp_layers.h"
#include "models/tp_weights.h"
#include "models/weight_source.h"
#include "tests/parallel/harness.h"
#include "tests/parallel/tp_test_model.h"

namespace kiln::test {
namespace {

struct Case {
  const char* name;
  int64_t kv_heads;
  bool rslora = false, dora = false, sp = false, packed = false;
  double dropout = 0.1;
};

LoraSettings settings(const Case& k) {
  LoraSettings s;
  s.rank = 4;
  s.alpha = 8;
  s.dropout = k.dropout;
  s.rslora = k.rslora;
  s.dora = k.dora;
  s.targets = {"all_linear"};
  return s;
}

// The global weights: the seeded base, and adapters with B non-zero (a fresh B is zero, which
// would leave A's gradient zero) and magnitudes away from the base's norms.
std::vector<std::pair<std::string, at::Tensor>> global_weights(Llama& ref, const ModelConfig& c) {
  std::unique_ptr<WeightSource> base = random_init_source(c, 5);
  at::manual_seed(17);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : ref->named_parameters()) {
    const std::string& n = item.key();
    const std::vector<int64_t> shape = item.value().sizes().vec();
    if (!is_lora_parameter(n))
      out.emplace_back(n, base->read_full(n, shape));
    else if (n.size() > 21 && n.compare(n.size() - 21, 21, "lora_magnitude_vector") == 0)
      out.emplace_back(n, at::rand(shape) + 0.5);
    else
      out.emplace_back(n, at::randn(shape) * 0.2);
  }
  return out;
}

void check_case(const Case& k) {
  SCOPED_TRACE(k.name);
  const ModelConfig c = tiny(k.kv_heads);
  const Batch batch = make_batch(c, k.packed);
  auto clock = std::make_shared<LoraDropoutClock>();
  clock->seed = 3;
  clock->step = 2;
  clock->micro_batch = 1;

  Llama ref(
      c, LlamaBuild{StageSpec{}, lora_projections(dense_projections(), settings(k), clock), /*meta=*/true});
  const auto weights = global_weights(ref, c);
  {
    auto src = tensors_source(weights, "test weights");
    materialize(*ref, *src);
  }
  auto tp = std::make_shared<TensorParallel>(world(), k.sp);
  Llama par(c,
            LlamaBuild{StageSpec{}, lora_projections(tensor_parallel_projections(tp), settings(k), clock, tp),
                       /*meta=*/true, tp});
  const TpShardMap shards = par->tp_shards();
  {
    TpShardedSource src(tensors_source(weights, "test weights"), shards);
    materialize(*par, src);
  }
  // Adapters' slices are in the map as the base's are: B / magnitude rows on column-parallel
  // bases (q, k, v, gate, up), A's columns on row-parallel ones (o, down).
  EXPECT_EQ(shards.count("model.layers.0.self_attn.q_proj.lora_B"), 1u);
  EXPECT_EQ(shards.count("model.layers.0.self_attn.q_proj.lora_A"), 0u);
  EXPECT_EQ(shards.count("model.layers.1.mlp.down_proj.lora_A"), 1u);
  EXPECT_EQ(shards.count("model.layers.1.mlp.down_proj.lora_B"), 0u);
  EXPECT_EQ(shards.count("model.layers.0.mlp.up_proj.lora_magnitude_vector"), k.dora ? 1u : 0u);

  at::Tensor ref_loss = ref->forward_loss(batch);
  ref_loss.backward();
  at::Tensor loss = par->forward_loss(batch);
  loss.backward();
  EXPECT_LT(rel(loss.detach(), ref_loss.detach()), 1e-5)
      << loss.item<double>() << " vs " << ref_loss.item<double>();
  {
    at::NoGradGuard no_grad;
    ref->eval();
    par->eval();
    at::Tensor logits = par->forward(batch), want = ref->forward(batch);
    EXPECT_LT(rel(logits.narrow(-1, 0, c.vocab_size), want.narrow(-1, 0, c.vocab_size)), 1e-5);
  }

  std::map<std::string, at::Tensor> ref_grads;
  for (const auto& item : ref->named_parameters()) ref_grads[item.key()] = item.value().grad();
  int64_t adapters = 0;
  for (const auto& item : par->named_parameters()) {
    SCOPED_TRACE(item.key());
    at::Tensor g = item.value().grad();
    ASSERT_TRUE(g.defined());
    at::Tensor want = ref_grads.at(item.key());
    if (const TpShard* s = find_shard(shards, item.key())) {
      const int64_t inside = std::min(s->len, s->global_shape[s->dim] - s->offset);
      want = want.narrow(s->dim, s->offset, inside);
      g = g.narrow(s->dim, 0, inside);
    }
    ASSERT_EQ(g.sizes(), want.sizes());
    // An adapter's gradient is never all zero here (a vocabulary slice's may be: no id in it).
    if (is_lora_parameter(item.key())) {
      EXPECT_GT(want.abs().max().item<double>(), 0.0);
    }
    // fp32 rounding of different reduction orders reaches ~2e-5 of the largest element here
    // (dropout's 1/(1-p) and B's 0.2 scale enlarge it); a missing sum over tp is O(0.1) or more.
    EXPECT_LT(rel(g, want), 1e-4);
    adapters += is_lora_parameter(item.key());
  }
  EXPECT_EQ(adapters, 7 * c.num_layers * (k.dora ? 3 : 2));
}

TEST(LoraTensorParallel, MatchesOneRankLoraModel) {
  // np 2: kv heads 2 split; np 4 with kv 2: each kv head (and its adapter's B rows) shared by two ranks.
  check_case({"lora", 2});
  check_case({"lora, 4 kv heads", 4});
  check_case({"rslora, packed", 2, /*rslora=*/true, false, false, /*packed=*/true});
  check_case({"dora", 2, false, /*dora=*/true});
  check_case({"dora without dropout", 2, false, true, false, false, /*dropout=*/0.0});
  check_case({"sequence parallel, dora, packed", 2, false, true, /*sp=*/true, /*packed=*/true});
}

// DoRA's magnitude starts as ||W|| per output row: on a row-parallel base the squares of the
// rank's columns are summed over tp, so every layout starts from the one-rank magnitude.
TEST(LoraTensorParallel, DoraMagnitudeFromSplitBase) {
  const ModelConfig c = tiny(2);
  Case k{"dora init", 2, false, true};
  Llama ref(
      c, LlamaBuild{StageSpec{}, lora_projections(dense_projections(), settings(k), nullptr), /*meta=*/true});
  const auto weights = global_weights(ref, c);
  {
    auto src = tensors_source(weights, "test weights");
    materialize(*ref, *src);
  }
  auto tp = std::make_shared<TensorParallel>(world(), false);
  Llama par(
      c, LlamaBuild{StageSpec{}, lora_projections(tensor_parallel_projections(tp), settings(k), nullptr, tp),
                    /*meta=*/true, tp});
  const TpShardMap shards = par->tp_shards();
  {
    TpShardedSource src(tensors_source(weights, "test weights"), shards);
    materialize(*par, src);
  }
  auto ref_ps = lora_projections_of(*ref), par_ps = lora_projections_of(*par);
  ASSERT_EQ(ref_ps.size(), par_ps.size());
  for (size_t i = 0; i < ref_ps.size(); ++i) {
    SCOPED_TRACE(ref_ps[i].first);
    ref_ps[i].second->adapter->init_magnitude(ref_ps[i].second->lora_base());
    par_ps[i].second->adapter->init_magnitude(par_ps[i].second->lora_base());
    at::Tensor want = ref_ps[i].second->adapter->lora_magnitude_vector;
    at::Tensor got = par_ps[i].second->adapter->lora_magnitude_vector;
    const TpShard* s = find_shard(shards, ref_ps[i].first + ".lora_magnitude_vector");
    if (s) want = want.narrow(0, s->offset, s->len);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT(rel(got, want), 1e-6);
  }
}

}  // namespace
}  // namespace kiln::test
