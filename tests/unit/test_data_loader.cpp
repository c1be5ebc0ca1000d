// Data tests: Batch layout (labels, masks, position ids, padding), the loader's global order
// for 1, 2 and 4 data-parallel ranks, exact resume, packing efficiency and the eval loader.
#include <gtest/gtest.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "data/loader.h"
#include "data/prep.h"
#include "tests/unit/test_data_util.h"
#include "trainer/config.h"

namespace kiln {
namespace {

using test::fixture;
using test::TempDir;
using test::tokenizer_path;

std::vector<int64_t> row_of(const at::Tensor& t, int64_t r) {
  const at::Tensor row = t[r].contiguous();
  return std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
}

// A prepared store of the fixture mixture, shared by the tests of this file.
const std::string& store_dir() {
  static TempDir tmp;
  static const std::string dir = [] {
    PrepOptions o;
    o.data_json = fixture("data.json");
    o.tokenizer = tokenizer_path();
    o.out_dir = tmp / "store";
    o.progress = false;
    run_prep(o);
    return o.out_dir;
  }();
  return dir;
}

Config loader_config(int64_t seq_len, int64_t micro) {
  Config cfg;
  cfg.model.vocab_size = 700;  // the test tokenizer's pieces (the loader checks the store against it)
  cfg.data.mixture = store_dir();
  cfg.data.seq_len = seq_len;
  cfg.train.micro_batch_size = micro;
  cfg.train.seed = 77;
  return cfg;
}

TEST(DataBatch, LabelsMasksPositionsAndPadding) {
  TokenStore store(store_dir());
  const StoreSource& text = store.sources()[0];
  const StoreSource& sft = store.sources()[1];
  const int64_t a = text.doc_length(1), b = sft.doc_length(2);
  const int64_t T = (a - 1) + (b - 1) + 3;  // two samples and three padding positions
  const Batch batch = make_batch(store, {{{0, 1, a}, {1, 2, b}}, {}}, T, store.pad_id());
  ASSERT_EQ(batch.input_ids.sizes(), (std::vector<int64_t>{2, T}));
  EXPECT_TRUE(batch.packed);
  const auto in = row_of(batch.input_ids, 0), lab = row_of(batch.labels, 0),
             pos = row_of(batch.position_ids, 0);
  int64_t loss = 0;
  for (int64_t k = 0; k + 1 < a; ++k) {  // pretraining text: every next token is a label
    EXPECT_EQ(in[k], text.doc_tokens(1)[k]);
    EXPECT_EQ(lab[k], text.doc_tokens(1)[k + 1]);
    EXPECT_EQ(pos[k], k);
    ++loss;
  }
  EXPECT_EQ(lab[a - 2], 2);              // the text's last label is its </s>
  for (int64_t k = 0; k + 1 < b; ++k) {  // SFT: labels only where the mask trains the next token
    const int64_t t = a - 1 + k;
    EXPECT_EQ(in[t], sft.doc_tokens(2)[k]);
    EXPECT_EQ(lab[t], sft.doc_mask(2)[k + 1] ? sft.doc_tokens(2)[k + 1] : kIgnoreIndex);
    EXPECT_EQ(pos[t], k);  // positions restart at the second sample
    loss += sft.doc_mask(2)[k + 1];
  }
  for (int64_t k = 0; k < 3; ++k) {  // padding: its own document, no labels
    EXPECT_EQ(in[T - 3 + k], store.pad_id());
    EXPECT_EQ(lab[T - 3 + k], kIgnoreIndex);
    EXPECT_EQ(pos[T - 3 + k], k);
  }
  EXPECT_EQ(row_of(batch.labels, 1), std::vector<int64_t>(T, kIgnoreIndex));  // an empty row
  EXPECT_EQ(batch.loss_tokens, loss);
  EXPECT_EQ(batch.source_tokens, (std::vector<int64_t>{a, b}));
  // One sample per row (padding aside) is not packed: a causal mask alone keeps it apart.
  EXPECT_FALSE(make_batch(store, {{{0, 1, a}}}, T, store.pad_id()).packed);
}

TEST(DataBatch, SampleLossWeightsAverageOverSamples) {
  // Row 0: a sample with 3 trained labels (positions 0-3), one with 1 (4-6), padding (7).
  // Row 1: a sample with 2 trained labels, then padding.
  const int64_t I = kIgnoreIndex;
  Batch b;
  b.labels = at::tensor(std::vector<int64_t>{5, 6, 7, I, I, 8, I, I, 9, I, 4, I, I, I, I, I}).view({2, 8});
  b.position_ids =
      at::tensor(std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 0, 0, 1, 2, 3, 0, 1, 2, 3}).view({2, 8});
  const SampleLossWeights sw = sample_loss_weights(b);
  EXPECT_EQ(sw.samples, 3);
  const float t = 1.0f / 3;
  const std::vector<float> expected = {t, t, t, 0, 0, 1, 0, 0, 0.5f, 0, 0.5f, 0, 0, 0, 0, 0};
  const at::Tensor w = sw.weights.contiguous();
  EXPECT_EQ(std::vector<float>(w.data_ptr<float>(), w.data_ptr<float>() + 16), expected);
  // Each sample's weights sum to 1, so sum(loss * w) / samples is the mean of sample means.
  EXPECT_FLOAT_EQ(sw.weights.sum().item<float>(), 3.0f);
}

// The rows of `steps` training steps as dp ranks see them, stitched in rank order.
std::vector<std::vector<int64_t>> global_rows(int64_t dp, int64_t steps, int64_t global_batch) {
  const Config cfg = loader_config(48, 2);
  std::vector<std::unique_ptr<DataLoader>> ranks;
  for (int64_t r = 0; r < dp; ++r) ranks.push_back(std::make_unique<DataLoader>(cfg, r, dp, global_batch));
  std::vector<std::vector<int64_t>> rows;
  const int64_t micro_per_rank = global_batch / dp / cfg.train.micro_batch_size;
  for (int64_t s = 0; s < steps; ++s)
    for (int64_t r = 0; r < dp; ++r)
      for (int64_t m = 0; m < micro_per_rank; ++m) {
        const Batch b = ranks[r]->next();
        for (int64_t i = 0; i < b.input_ids.size(0); ++i) {
          auto row = row_of(b.input_ids, i);
          const auto lab = row_of(b.labels, i), pos = row_of(b.position_ids, i);
          row.insert(row.end(), lab.begin(), lab.end());
          row.insert(row.end(), pos.begin(), pos.end());
          rows.push_back(row);
        }
      }
  return rows;
}

TEST(DataLoader, GlobalOrderIsTheSameForOneTwoAndFourRanks) {
  const auto one = global_rows(1, 3, 8);
  ASSERT_EQ(one.size(), 24u);
  EXPECT_EQ(global_rows(2, 3, 8), one);
  EXPECT_EQ(global_rows(4, 3, 8), one);
  EXPECT_NE(one[0], one[1]);
}

TEST(DataLoader, RestoreReplaysExactlyTheSameBatches) {
  const Config cfg = loader_config(48, 2);
  DataLoader a(cfg, /*dp_rank=*/1, /*dp_size=*/2, /*global_batch_size=*/8);
  for (int i = 0; i < 5; ++i) a.next();  // mid-step: 2 micro-batches per step on this rank
  const LoaderState saved = a.state();
  EXPECT_EQ(saved.step, 2);
  EXPECT_EQ(saved.micro, 1);
  std::vector<Batch> expected;
  for (int i = 0; i < 4; ++i) expected.push_back(a.next());
  const LoaderState end = a.state();
  EXPECT_EQ(end.step, 4);
  EXPECT_EQ(end.micro, 1);

  nlohmann::json j = saved;  // what a checkpoint stores
  DataLoader b(cfg, 1, 2, 8);
  b.next();  // position elsewhere first: restore must discard what was prefetched
  b.restore(j.get<LoaderState>());
  for (int i = 0; i < 4; ++i) {
    const Batch got = b.next();
    EXPECT_TRUE(got.input_ids.equal(expected[i].input_ids)) << i;
    EXPECT_TRUE(got.labels.equal(expected[i].labels)) << i;
    EXPECT_TRUE(got.position_ids.equal(expected[i].position_ids)) << i;
    EXPECT_EQ(got.source_tokens, expected[i].source_tokens);
  }
  EXPECT_EQ(nlohmann::json(b.state()), nlohmann::json(end));
  // Global tokens per source at a step boundary count every rank's rows of the steps before.
  int64_t total = 0;
  for (int64_t t : end.source_tokens) total += t;
  EXPECT_GT(total, 0);

  LoaderState other = saved;
  other.sources = {"x.jsonl"};
  EXPECT_THROW(b.restore(other), UserError);
}

TEST(DataLoader, ReshardedResumeContinuesTheSameOrder) {
  // Two steps on one rank, then a checkpoint, then two ranks (and four) resume from it: the
  // rows they see, stitched in rank order, are the rows the single rank goes on to see.
  const Config cfg = loader_config(48, 2);
  DataLoader one(cfg, 0, 1, 8);
  for (int i = 0; i < 8; ++i) one.next();  // steps 0 and 1: 4 micro-batches each
  const LoaderState at_step2 = one.state();
  ASSERT_EQ(at_step2.step, 2);
  ASSERT_EQ(at_step2.micro, 0);
  std::vector<std::vector<int64_t>> expected;
  for (int i = 0; i < 8; ++i) {
    const Batch b = one.next();
    for (int64_t r = 0; r < 2; ++r) expected.push_back(row_of(b.input_ids, r));
  }
  for (int64_t dp : {2, 4}) {
    std::vector<std::unique_ptr<DataLoader>> ranks;
    for (int64_t r = 0; r < dp; ++r) {
      ranks.push_back(std::make_unique<DataLoader>(cfg, r, dp, 8));
      ranks.back()->restore(at_step2);
    }
    std::vector<std::vector<int64_t>> got;
    for (int step = 0; step < 2; ++step)
      for (auto& l : ranks)
        for (int64_t m = 0; m < 4 / dp; ++m) {
          const Batch b = l->next();
          for (int64_t r = 0; r < 2; ++r) got.push_back(row_of(b.input_ids, r));
        }
    EXPECT_EQ(got, expected) << "dp " << dp;
  }
  LoaderState mid = at_step2;
  mid.micro = 3;  // valid for dp 1 (4 micro-batches per step), not for dp 4 (1 per step)
  DataLoader four(cfg, 0, 4, 8);
  EXPECT_THROW(four.restore(mid), UserError);
}

TEST(DataLoader, SourceTokensAtStepBoundariesAreGlobal) {
  // After step s every rank reports the same global per-source tokens, which are the sum of
  // the source_tokens of all batches of all ranks so far.
  const Config cfg = loader_config(48, 2);
  std::vector<std::unique_ptr<DataLoader>> ranks;
  for (int r = 0; r < 2; ++r) ranks.push_back(std::make_unique<DataLoader>(cfg, r, 2, 8));
  std::vector<int64_t> sum(2, 0);
  for (int step = 0; step < 3; ++step)
    for (auto& l : ranks)
      for (int m = 0; m < 2; ++m) {
        const Batch b = l->next();
        for (int s = 0; s < 2; ++s) sum[s] += b.source_tokens[s];
      }
  EXPECT_EQ(ranks[0]->state().source_tokens, sum);
  EXPECT_EQ(ranks[1]->state().source_tokens, sum);
  EXPECT_EQ(ranks[0]->source_names(), (std::vector<std::string>{"pretrain.jsonl", "sft_firefly.jsonl"}));
}

TEST(DataLoader, PackedRowsKeepSamplesApartAndReportEfficiency) {
  Config cfg = loader_config(64, 2);
  DataLoader l(cfg, 0, 1, 2);
  int64_t positions = 0, pad = 0;
  for (int i = 0; i < 10; ++i) {
    const Batch b = l.next();
    for (int64_t r = 0; r < 2; ++r) {
      const auto in = row_of(b.input_ids, r), lab = row_of(b.labels, r), pos = row_of(b.position_ids, r);
      for (int64_t t = 0; t + 1 < 64; ++t) {
        // Inside a sample, a real label is the next input; at a boundary (next position 0)
        // the label is the sample's own last token, never the next sample's first.
        if (pos[t + 1] != 0 && lab[t] != kIgnoreIndex) {
          EXPECT_EQ(lab[t], in[t + 1]);
        }
        if (pos[t + 1] == 0 && lab[t] != kIgnoreIndex) {
          EXPECT_EQ(lab[t], 2);  // </s> ends every sample
        }
      }
      for (int64_t t = 0; t < 64; ++t) {
        ++positions;
        // trailing padding: pad inputs with no label after the last real sample
        if (in[t] == 3 && lab[t] == kIgnoreIndex) ++pad;
      }
    }
  }
  EXPECT_NEAR(l.packing_efficiency(), 1.0 - double(pad) / positions, 1e-12);
  EXPECT_GT(l.packing_efficiency(), 0.8);
  EXPECT_GT(l.loss_fraction(), 0.3);
  EXPECT_LT(l.loss_fraction(), l.packing_efficiency());
}

TEST(DataLoader, BadLayoutsAreUserErrors) {
  const Config cfg = loader_config(48, 2);
  EXPECT_THROW(DataLoader(cfg, 0, 2, 6), UserError);  // 6 is not a multiple of 2 * 2
  Config missing = cfg;
  missing.data.mixture = "/nonexistent/data.json";
  try {
    DataLoader l(missing, 0, 1, 2);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), "data.mixture: /nonexistent/data.json: file not found");
  }
}

TEST(DataEvalLoader, EverySampleOnceSplitAcrossRanks) {
  Config cfg = loader_config(64, 2);
  cfg.data.eval = store_dir();
  TokenStore store(store_dir());
  int64_t expected = 0;  // positions of every sample: tokens - 1 each, over-long ones truncated
  for (const auto& s : store.sources())
    for (int64_t d = 0; d < s.docs; ++d) expected += std::min<int64_t>(s.doc_length(d) - 1, 64);
  // The multiset of samples: every (inputs, labels) of every document, truncated to 64
  // positions, once over the two ranks; padding (inputs pad, no labels) left out.
  using SampleRows = std::pair<std::vector<int64_t>, std::vector<int64_t>>;
  std::vector<SampleRows> want, got;
  for (const auto& s : store.sources())
    for (int64_t d = 0; d < s.docs; ++d) {
      SampleRows w;
      for (int64_t k = 0; k < std::min<int64_t>(s.doc_length(d) - 1, 64); ++k) {
        w.first.push_back(s.doc_tokens(d)[k]);
        w.second.push_back(s.doc_mask(d)[k + 1] ? s.doc_tokens(d)[k + 1] : kIgnoreIndex);
      }
      want.push_back(w);
    }
  int64_t real = 0, batches[2] = {0, 0};
  for (int r = 0; r < 2; ++r) {
    EvalLoader e(cfg, r, 2);
    Batch b;
    while (e.next(b)) {
      ++batches[r];
      for (int64_t t : b.source_tokens) real += t;
      for (int64_t row = 0; row < b.input_ids.size(0); ++row) {
        const auto in = row_of(b.input_ids, row), lab = row_of(b.labels, row),
                   pos = row_of(b.position_ids, row);
        for (size_t t = 0; t < in.size(); ++t) {
          if (pos[t] == 0) got.emplace_back();
          got.back().first.push_back(in[t]);
          got.back().second.push_back(lab[t]);
        }
      }
    }
  }
  got.erase(std::remove_if(got.begin(), got.end(),
                           [&](const SampleRows& g) {
                             return std::all_of(g.first.begin(), g.first.end(),
                                                [&](int64_t t) { return t == store.pad_id(); }) &&
                                    std::all_of(g.second.begin(), g.second.end(),
                                                [](int64_t t) { return t == kIgnoreIndex; });
                           }),
            got.end());
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want) << "the eval batches are not the store's samples, each once";
  int64_t docs = 0;
  for (const auto& s : store.sources()) docs += s.docs;
  EXPECT_EQ(real - docs, expected);  // source_tokens count tokens; each sample has one more
  EXPECT_EQ(batches[0], batches[1]);
  cfg.data.eval_samples = 5;
  EvalLoader five(cfg, 0, 1);
  Batch b;
  int64_t tokens = 0, n = 0;
  while (five.next(b)) {
    for (int64_t t : b.source_tokens) tokens += t;
    ++n;
  }
  int64_t first5 = 0;
  for (int64_t d = 0; d < 5; ++d) first5 += store.sources()[0].doc_length(d);
  EXPECT_EQ(tokens, first5);
}

}  // namespace
}  // namespace kiln
