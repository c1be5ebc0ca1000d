// The tensor-parallel model (models/tp_layers.h, the vocab-parallel loss) against the one-rank
// model with the same global weights, with the world as the tp group (np 2 and 4): the loss, the
// gathered logits and every parameter's gradient (each rank's slice of the reference gradient)
// agree, for split and replicated key/value heads, a vocabulary not divisible by tp, tied
// embeddings, ALiBi, NormHead, sequence parallel and packed rows. And no rank allocates a
// (B, T, V) logits tensor while computing the loss: a counting CPU allocator measures it.
#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>

#include "base/file_io.h"
#include "models/hf.h"
#include "models/llama.h"
#include "models/safetensors.h"
#include "models/weight_source.h"
#include "models/tp_layers.h"
#include "models/tp_weights.h"
#include "tests/parallel/harness.h"
#include "tests/parallel/tp_test_model.h"

namespace kiln::test {
namespace {

Llama reference_model(const ModelConfig& c) {
  Llama m(c, LlamaBuild{StageSpec{}, {}, /*meta=*/true});
  materialize(*m, *random_init_source(c, 5));
  return m;
}

Llama tp_model(const ModelConfig& c, bool sequence_parallel) {
  auto tp = std::make_shared<TensorParallel>(world(), sequence_parallel);
  Llama m(c, LlamaBuild{StageSpec{}, tensor_parallel_projections(tp), /*meta=*/true, tp});
  TpShardedSource source(random_init_source(c, 5), m->tp_shards());
  materialize(*m, source);
  return m;
}

struct Case {
  const char* name;
  int64_t kv_heads;
  bool tied = false, alibi = false, norm_head = false, sp = false, packed = false;
};

void check_case(const Case& k) {
  SCOPED_TRACE(k.name);
  ModelConfig c = tiny(k.kv_heads);
  c.tie_embeddings = k.tied;
  c.norm_head = k.norm_head;
  if (k.alibi) c.position = Position::alibi;
  const Batch batch = make_batch(c, k.packed);

  Llama ref = reference_model(c);
  at::Tensor ref_loss = ref->forward_loss(batch);
  ref_loss.backward();
  Llama par = tp_model(c, k.sp);
  at::Tensor loss = par->forward_loss(batch);
  loss.backward();
  EXPECT_LT(rel(loss.detach(), ref_loss.detach()), 1e-5)
      << loss.item<double>() << " vs " << ref_loss.item<double>();

  {
    at::NoGradGuard no_grad;
    at::Tensor logits = par->forward(batch), ref_logits = ref->forward(batch);
    ASSERT_EQ(logits.sizes(), ref_logits.sizes());
    at::Tensor real = ref_logits.narrow(-1, 0, c.vocab_size);
    EXPECT_LT(rel(logits.narrow(-1, 0, c.vocab_size), real), 1e-5);
  }

  // Every local gradient is its slice of the reference gradient (zeros in vocabulary padding).
  std::map<std::string, at::Tensor> ref_grads;
  for (const auto& item : ref->named_parameters()) ref_grads[item.key()] = item.value().grad();
  const TpShardMap shards = par->tp_shards();
  int64_t sharded = 0;
  for (const auto& item : par->named_parameters()) {
    SCOPED_TRACE(item.key());
    at::Tensor g = item.value().grad();
    ASSERT_TRUE(g.defined());
    at::Tensor want = ref_grads.at(item.key());
    auto it = shards.find(item.key());
    if (it != shards.end()) {
      ++sharded;
      const TpShard& s = it->second;
      const int64_t inside = std::min(s.len, s.global_shape[s.dim] - s.offset);
      want = want.narrow(s.dim, s.offset, inside);
      if (inside < s.len) {
        EXPECT_EQ(g.narrow(s.dim, inside, s.len - inside).abs().max().item<double>(), 0.0);
      }
      g = g.narrow(s.dim, 0, inside);
    }
    EXPECT_LT(rel(g, want), 1e-5);  // differences are reduction-order rounding, ~1e-6 at most
  }
  EXPECT_EQ(sharded, 7 * c.num_layers + 1 + (c.tie_embeddings ? 0 : 1));
}

TEST(TensorParallel, MatchesOneRankModel) {
  // np 2: kv heads 2 split; np 4: each kv head shared by two ranks (gradients summed over them).
  check_case({"gqa", 2});
  check_case({"mha", 4});
  check_case({"tied", 2, /*tied=*/true});
  check_case({"alibi", 4, false, /*alibi=*/true});
  check_case({"norm_head", 2, false, false, /*norm_head=*/true});
  check_case({"packed", 2, false, false, false, false, /*packed=*/true});
  check_case({"sequence parallel", 2, false, false, false, /*sp=*/true});
  check_case({"sequence parallel, packed, tied, alibi", 1, true, true, false, true, true});
}

// The transformers fixtures (tests/fixtures/hf: 8 heads, 2 kv heads, so split at np 2 and shared
// at np 4), each rank reading only its slices from the safetensors files, give transformers'
// logits and loss.
TEST(TensorParallel, HuggingFaceFixturesGiveReferenceLogits) {
  const std::string root = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/";
  for (const char* name : {"llama_linear", "llama_llama3", "llama_dynamic_tied", "llama_linear_sharded"}) {
    SCOPED_TRACE(name);
    const std::string dir = root + name;
    ModelConfig c = read_hf_config(dir);
    auto tp = std::make_shared<TensorParallel>(world(), false);
    Llama m(c, LlamaBuild{StageSpec{}, tensor_parallel_projections(tp), /*meta=*/true, tp});
    std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
    for (const auto& item : m->named_parameters())
      shapes.emplace_back(item.key(), item.value().sizes().vec());
    const TpShardMap shards = m->tp_shards();
    TpShardedSource source(hf_weight_source(dir, tp_global_shapes(shapes, shards), false), shards);
    materialize(*m, source);
    const std::string expected = std::string(name) == "llama_linear_sharded" ? root + "llama_linear" : dir;
    SafetensorsFile e(expected + "/expected.safetensors");
    Batch b;
    b.input_ids = e.tensor("input_ids").clone();
    b.labels = e.tensor("labels").clone();
    b.position_ids = e.tensor("position_ids").clone();
    b.loss_tokens = b.labels.ne(kIgnoreIndex).sum().item<int64_t>();
    at::NoGradGuard no_grad;
    at::Tensor ref = e.tensor("logits");
    at::Tensor logits = m->forward(b);
    ASSERT_EQ(logits.sizes(), ref.sizes());
    EXPECT_LE(rel(logits, ref), 1e-4);
    if (e.contains("loss")) {
      at::Tensor loss = m->forward_loss(b) / static_cast<double>(b.loss_tokens);
      EXPECT_LE(rel(loss, e.tensor("loss").to(at::kFloat)), 1e-4);
    }
  }
}

// Baichuan's fused W_pack (3h, h) = [q; k; v]: each rank reads its q, k and v rows out of it and
// the loss is the one-rank model's.
TEST(TensorParallel, BaichuanWPackSplitPerRank) {
  ModelConfig c = tiny(4);  // W_pack needs as many kv heads as heads
  Llama ref = reference_model(c);
  const Batch batch = make_batch(c, false);
  std::string dir =
      std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + "/kiln-tp-wpack.XXXXXX";
  std::vector<char> buf(dir.begin(), dir.end());
  buf.push_back(0);
  if (world().rank() == 0) {
    dir = mkdtemp(buf.data());
    std::vector<std::pair<std::string, at::Tensor>> named;
    std::map<std::string, at::Tensor> params;
    for (const auto& item : ref->named_parameters()) params[item.key()] = item.value().detach();
    for (const auto& [name, t] : params) {
      const size_t at_q = name.find("self_attn.q_proj.weight");
      if (at_q != std::string::npos) {
        const std::string prefix = name.substr(0, at_q) + "self_attn.";
        named.emplace_back(prefix + "W_pack.weight",
                           at::cat({t, params[prefix + "k_proj.weight"], params[prefix + "v_proj.weight"]}));
      } else if (name.find("k_proj") == std::string::npos && name.find("v_proj") == std::string::npos) {
        named.emplace_back(name, t);
      }
    }
    write_safetensors(dir + "/model.safetensors", named);
  }
  // Every rank learns the directory's name from rank 0 (as bytes).
  at::Tensor name = at::zeros({256}, at::kInt);
  if (world().rank() == 0)
    for (size_t i = 0; i < dir.size(); ++i) name[i] = static_cast<int>(dir[i]);
  world().broadcast(name, 0);
  dir.clear();
  for (int64_t i = 0; i < 256 && name[i].item<int>() != 0; ++i) dir += static_cast<char>(name[i].item<int>());

  auto tp = std::make_shared<TensorParallel>(world(), false);
  Llama m(c, LlamaBuild{StageSpec{}, tensor_parallel_projections(tp), /*meta=*/true, tp});
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  for (const auto& item : m->named_parameters()) shapes.emplace_back(item.key(), item.value().sizes().vec());
  const TpShardMap shards = m->tp_shards();
  {
    TpShardedSource source(hf_weight_source(dir, tp_global_shapes(shapes, shards), false), shards);
    materialize(*m, source);
  }
  at::NoGradGuard no_grad;
  EXPECT_LT(rel(m->forward_loss(batch), ref->forward_loss(batch)), 1e-5);
  world().barrier();
  if (world().rank() == 0) remove_tree(dir);
}

// `kiln plan`'s per-rank parameter count is what a rank allocates.
TEST(TensorParallel, PlanCountsTheRanksParameters) {
  for (int64_t kv : {1, 2, 4})
    for (bool tied : {false, true}) {
      ModelConfig c = tiny(kv);
      c.tie_embeddings = tied;
      Llama m = tp_model(c, false);
      int64_t n = 0;
      for (const auto& item : m->named_parameters()) n += item.value().numel();
      EXPECT_EQ(n, tp_rank_parameters(c, world().size())) << "kv " << kv << " tied " << tied;
    }
}

// A CPU allocator that forwards to the default one and records the largest single request.
class CountingAllocator : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    size_t seen = largest.load();
    while (n > seen && !largest.compare_exchange_weak(seen, n)) {
    }
    return base_->allocate(n);
  }
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    base_->copy_data(dest, src, count);
  }
  std::atomic<size_t> largest{0};

 private:
  c10::Allocator* base_;
};

TEST(TensorParallel, LossNeverAllocatesFullVocabularyLogits) {
  ModelConfig c = tiny(2);
  c.vocab_size = 4096;  // logits dominate every other tensor: (B, T, V) fp32 = 256 KiB
  c.hidden_size = 16;
  c.ffn_hidden_size = 16;
  c.tie_embeddings = true;
  const Batch batch = make_batch(c, false);
  Llama par = tp_model(c, false);
  const size_t full = static_cast<size_t>(batch.input_ids.numel() * c.vocab_size * 4);
  const size_t local = full / world().size();
  c10::Allocator* base = c10::GetCPUAllocator();
  CountingAllocator counting(base);
  c10::SetCPUAllocator(&counting, /*priority=*/100);
  at::Tensor loss = par->forward_loss(batch);
  loss.backward();
  c10::SetCPUAllocator(base, /*priority=*/101);
  EXPECT_GE(counting.largest.load(), local);  // the local slice was measured
  EXPECT_LT(counting.largest.load(), full) << "a rank allocated " << counting.largest.load() << " bytes";
}

}  // namespace
}  // namespace kiln::test
