// Sharded model state (issue 7) on one process: box geometry of flat ranges, the per-tensor
// random init, placeholder construction, an optimizer built from a weight source equal to one
// built from a materialised model, HF sources reading ranges, and checkpoints that verify,
// reassemble and reject damage.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "models/hf.h"
#include "models/llama.h"
#include "models/weight_source.h"
#include "parallel/communicator.h"
#include "parallel/tensor_slice.h"
#include "parallel/zero.h"
#include "test_data_util.h"
#include "trainer/checkpoint.h"
#include "base/error.h"
#include "base/file_io.h"

namespace fs = std::filesystem;

namespace kiln {
namespace {

ModelConfig tiny() {
  ModelConfig c;
  c.vocab_size = 50;
  c.hidden_size = 16;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.ffn_hidden_size = 24;
  c.max_seq_len = 32;
  return c;
}

TEST(TensorSlice, FlatRangesSplitIntoContiguousBoxesInOrder) {
  std::mt19937 rng(7);
  const std::vector<std::vector<int64_t>> shapes = {{7}, {5, 3}, {4, 3, 5}, {2, 3, 2, 4}, {1, 9}, {6, 1}};
  for (const auto& shape : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    at::Tensor values = at::arange(n, at::kLong).view(shape);
    for (int trial = 0; trial < 40; ++trial) {
      int64_t a = std::uniform_int_distribution<int64_t>(0, n - 1)(rng);
      int64_t b = std::uniform_int_distribution<int64_t>(a + 1, n)(rng);
      const std::vector<Box> boxes = flat_range_boxes(shape, a, b);
      ASSERT_LE(boxes.size(), 2 * shape.size()) << "too many boxes";
      int64_t pos = a;
      for (const Box& box : boxes) {
        ASSERT_TRUE(box_inside(box, shape)) << box_str(box);
        // The box's elements are exactly the next run of the range, in flat order.
        at::Tensor got = box_view(values, box).reshape(-1);
        EXPECT_TRUE(got.equal(at::arange(pos, pos + box.numel(), at::kLong))) << box_str(box);
        pos += box.numel();
      }
      EXPECT_EQ(pos, b);
    }
  }
  EXPECT_EQ(flat_range_boxes({4, 6}, 6, 18).size(), 1u);  // whole rows: one box
  EXPECT_EQ(flat_range_boxes({4, 6}, 3, 21).size(), 3u);  // partial, whole rows, partial
}

TEST(TensorSlice, RangesReassembleFromSlicesOfAnotherPartition) {
  const std::vector<int64_t> shape = {6, 5};
  at::Tensor full = at::randn(shape);
  // Saved as 4 uneven flat ranges, read back as 3 other ones.
  std::vector<TensorSlice> saved;
  const int64_t cuts[] = {0, 7, 8, 19, 30};
  for (int i = 0; i < 4; ++i)
    for (auto& s : slices_of_range("t", shape, cuts[i], cuts[i + 1],
                                   full.reshape(-1).narrow(0, cuts[i], cuts[i + 1] - cuts[i])))
      saved.push_back(std::move(s));
  std::vector<const TensorSlice*> ptrs;
  for (const auto& s : saved) ptrs.push_back(&s);
  for (auto [a, b] : {std::pair<int64_t, int64_t>{0, 10}, {10, 20}, {3, 30}}) {
    at::Tensor out = at::empty({b - a});
    EXPECT_EQ(fill_range_from_slices(ptrs, shape, a, b, out), b - a);
    EXPECT_TRUE(out.equal(full.reshape(-1).narrow(0, a, b - a)));
  }
}

TEST(WeightSource, RandomInitIsPerTensorAndRangeIndependent) {
  const ModelConfig cfg = tiny();
  auto src = random_init_source(cfg, 1234);
  const std::vector<int64_t> shape = {24, 16};
  at::Tensor whole = src->read_full("model.layers.0.mlp.up_proj.weight", shape).reshape(-1);
  // Any range is the same slice of the same tensor, read in any order.
  auto other = random_init_source(cfg, 1234);
  other->read_full("model.layers.1.mlp.up_proj.weight", shape);
  EXPECT_TRUE(other->read("model.layers.0.mlp.up_proj.weight", shape, 100, 250).equal(whole.narrow(0, 100, 150)));
  EXPECT_FALSE(src->read_full("model.layers.1.mlp.up_proj.weight", shape).reshape(-1).equal(whole));
  EXPECT_FALSE(random_init_source(cfg, 99)->read_full("model.layers.0.mlp.up_proj.weight", shape).reshape(-1).equal(whole));
  EXPECT_NEAR(whole.std().item<double>(), cfg.init_std, 0.2 * cfg.init_std);
  const double out_std = random_init_source(cfg, 1)->read_full("model.layers.0.mlp.down_proj.weight", {16, 24}).std().item<double>();
  EXPECT_NEAR(out_std, cfg.init_std / std::sqrt(2.0 * cfg.num_layers), 0.2 * cfg.init_std / 2);
  EXPECT_TRUE(src->read_full("model.norm.weight", {16}).equal(at::ones({16})));
}

TEST(WeightSource, PlaceholderModelHoldsNoParameterMemory) {
  Llama model(tiny(), LlamaBuild{StageSpec{}, {}, /*meta=*/true});
  int64_t bytes = 0;
  for (const auto& p : model->parameters()) {
    EXPECT_TRUE(is_shape_only(p) || p.numel() <= 1);
    bytes += static_cast<int64_t>(p.storage().nbytes());
  }
  EXPECT_LE(bytes, static_cast<int64_t>(model->parameters().size()) * 4);
  materialize(*model, *random_init_source(tiny(), 5));
  for (const auto& p : model->parameters()) EXPECT_FALSE(is_shape_only(p));
}

// Built from a source on placeholders (what `kiln train` does) = built from a model materialised
// with the same init, at every stage.
TEST(WeightSource, OptimizerFromSourceEqualsOptimizerFromModel) {
  auto dp = make_world_communicator("auto", false, 5.0);
  for (int stage : {0, 1, 2, 3}) {
    Llama a(tiny(), LlamaBuild{StageSpec{}, {}, true});
    materialize(*a, *random_init_source(tiny(), 11));
    ZeroOptimizer from_model(*a, *dp, stage, 1024, AdamWOptions{});
    Llama b(tiny(), LlamaBuild{StageSpec{}, {}, true});
    auto src = random_init_source(tiny(), 11);
    ZeroOptimizer from_source(*b, *dp, stage, 1024, AdamWOptions{}, false, *src);
    const auto pa = from_model.gather_parameters(), pb = from_source.gather_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t i = 0; i < pa.size(); ++i) {
      EXPECT_EQ(pa[i].first, pb[i].first);
      EXPECT_TRUE(pa[i].second.equal(pb[i].second)) << "stage " << stage << " " << pa[i].first;
    }
    if (stage == 3) {
      EXPECT_EQ(b->parameters().front().numel(), 0);  // released between uses
    }
  }
}

TEST(WeightSource, HfSourceReadsRangesOfTheMappedFiles) {
  const std::string dir = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/llama_linear_sharded";
  const ModelConfig cfg = read_hf_config(dir);
  Llama model(cfg);
  load_hf_weights(*model, dir);
  Llama shapes(cfg, LlamaBuild{StageSpec{}, {}, true});
  std::vector<std::pair<std::string, std::vector<int64_t>>> names;
  for (const auto& item : shapes->named_parameters()) names.emplace_back(item.key(), item.value().sizes().vec());
  auto src = hf_weight_source(dir, names);
  for (const auto& item : model->named_parameters()) {
    const int64_t n = item.value().numel();
    at::Tensor flat = item.value().reshape(-1);
    EXPECT_TRUE(src->read(item.key(), item.value().sizes().vec(), n / 3, n).equal(flat.narrow(0, n / 3, n - n / 3)))
        << item.key();
  }
  // A directory that does not fit the model is refused up front, whatever a rank would read.
  names[0].second[0] += 1;
  EXPECT_THROW(hf_weight_source(dir, names), UserError);
}

TEST(Checkpoint, SavedShardVerifiesAndReassembles) {
  auto world = make_world_communicator("auto", false, 5.0);
  Llama model(tiny(), LlamaBuild{StageSpec{}, {}, true});
  auto src = random_init_source(tiny(), 3);
  ZeroOptimizer opt(*model, *world, 1, 1024, AdamWOptions{}, false, *src);
  test::TempDir tmp;  // $TMPDIR, removed at the end
  const fs::path run = tmp / "save";
  CheckpointState st;
  st.step = 5;
  st.data = nlohmann::json::object();
  CheckpointShard shard;
  shard.slices = opt.state_slices();
  for (const auto& item : model->named_parameters()) shard.tensors.emplace_back(item.key(), item.value().sizes().vec());
  for (const auto& [name, shape] : opt.trained_shapes()) shard.trained.push_back(name);
  save_checkpoint(run.string(), *world, st, shard, "model: {}\n", 2);
  const std::string dir = find_resume_checkpoint(run.string());
  ASSERT_EQ(fs::path(dir).filename(), "step-00000005");
  EXPECT_TRUE(verify_checkpoint(dir).ok()) << verify_checkpoint(dir).problem;
  auto weights = checkpoint_weights_source(dir);
  for (const auto& [name, t] : opt.gather_parameters())
    EXPECT_TRUE(weights->read_full(name, t.sizes().vec()).equal(t)) << name;

  // A byte flipped in the shard: caught by the checksum, naming the file.
  const fs::path file = fs::path(dir) / "shard-00000-of-00001.safetensors";
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(fs::file_size(file) / 2));
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x40);
    f.seekp(static_cast<std::streamoff>(fs::file_size(file) / 2));
    f.write(&c, 1);
  }
  const CheckpointCheck bad = verify_checkpoint(dir);
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.problem.find("shard-00000-of-00001.safetensors"), std::string::npos) << bad.problem;
  EXPECT_NE(bad.problem.find("checksum"), std::string::npos) << bad.problem;
  // The only checkpoint is damaged: no silent fresh start.
  EXPECT_THROW(find_resume_checkpoint(run.string()), UserError);
}

}  // namespace
}  // namespace kiln
