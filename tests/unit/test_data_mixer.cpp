// Data tests: the telechat and proportional mixers, weight schedules, best-fit packing and the
// global row order.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include <cmath>
#include <map>
#include <set>

#include "base/error.h"
#include "data/mixer.h"
#include "data/packer.h"
#include "data/row_stream.h"
#include "trainer/config.h"

namespace kiln {
namespace {

std::vector<std::vector<int64_t>> equal_lengths(std::vector<int64_t> docs, int64_t len) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t n : docs) out.emplace_back(n, len);
  return out;
}

TEST(DataMixer, TelechatPoolCopiesPerWeight) {
  // {2.0, 1.0, 0.5} over 1000 samples each: one epoch's pool holds every sample of source 0
  // exactly twice, every sample of source 1 exactly once, and each sample of source 2 at
  // most once, about half of them (Binomial(1000, 0.5): 500 +- 16, 6 sigma below).
  Mixer m(MixMode::telechat, equal_lengths({1000, 1000, 1000}, 5), 42);
  const std::vector<double> w = {2.0, 1.0, 0.5};
  std::vector<std::map<int64_t, int>> seen(3);  // [source] doc -> copies in the first pool
  for (SampleRef r = m.next(w); m.epoch() == 1; r = m.next(w)) ++seen[r.source][r.doc];
  EXPECT_EQ(seen[0].size(), 1000u);
  for (const auto& [doc, n] : seen[0]) EXPECT_EQ(n, 2) << doc;
  EXPECT_EQ(seen[1].size(), 1000u);
  for (const auto& [doc, n] : seen[1]) EXPECT_EQ(n, 1) << doc;
  int64_t half = 0;
  for (const auto& [doc, n] : seen[2]) {
    EXPECT_EQ(n, 1) << doc;
    ++half;
  }
  EXPECT_GE(half, 400);
  EXPECT_LE(half, 600);
}

TEST(DataMixer, TelechatFractionalWeightAndSeeding) {
  // w = 1.5: every sample once, and a second copy for about half of them.
  auto draw_epoch = [](uint64_t seed) {
    Mixer m(MixMode::telechat, equal_lengths({2000}, 5), seed);
    std::vector<int64_t> order;  // the first pool, in draw order
    for (SampleRef r = m.next({1.5}); m.epoch() == 1; r = m.next({1.5})) order.push_back(r.doc);
    return std::make_pair(order.size(), order);
  };
  const auto [n1, o1] = draw_epoch(7);
  const auto [n2, o2] = draw_epoch(7);
  const auto [n3, o3] = draw_epoch(8);
  EXPECT_EQ(o1, o2);  // same seed, same pool and order
  EXPECT_NE(o1, o3);
  EXPECT_GE(n1, 2000u + 850u);  // 2000 + Binomial(2000, 0.5) = 3000 +- 22
  EXPECT_LE(n1, 2000u + 1150u);
}

TEST(DataMixer, ProportionalExactCountsForTwoOneHalf) {
  // Equal-length samples, weights {2, 1, 0.5} = {4/7, 2/7, 1/7}: every 7 draws hold exactly
  // 4, 2 and 1 samples, and at any point each source's tokens are within one sample of its share.
  Mixer m(MixMode::proportional, equal_lengths({50, 50, 50}, 10), 3);
  const std::vector<double> w = {2.0, 1.0, 0.5};
  for (int block = 1; block <= 100; ++block) {
    for (int i = 0; i < 7; ++i) {
      m.next(w);
      const auto& t = m.tokens_drawn();
      const double total = t[0] + t[1] + t[2];
      for (int s = 0; s < 3; ++s) EXPECT_LE(std::abs(t[s] - total * w[s] / 3.5), 10.0);
    }
    ASSERT_EQ(m.samples_drawn(), (std::vector<int64_t>{4 * block, 2 * block, block})) << block;
  }
  // 400 draws from a 50-sample source: 8 full passes, each a permutation of all 50.
}

TEST(DataMixer, ProportionalTracksTokenShareWithUnequalLengths) {
  std::vector<std::vector<int64_t>> lengths(3);
  for (int s = 0; s < 3; ++s)
    for (int d = 0; d < 97; ++d) lengths[s].push_back(1 + (d * 37 + s * 11) % 200);
  Mixer m(MixMode::proportional, lengths, 5);
  const std::vector<double> w = {2.0, 1.0, 0.5};
  for (int i = 0; i < 5000; ++i) {
    m.next(w);
    const auto& t = m.tokens_drawn();
    const double total = t[0] + t[1] + t[2];
    for (int s = 0; s < 3; ++s) ASSERT_LE(std::abs(t[s] - total * w[s] / 3.5), 200.0) << i;
  }
}

TEST(DataMixer, ProportionalVisitsEverySampleOncePerPass) {
  Mixer m(MixMode::proportional, equal_lengths({13}, 4), 9);
  // Each pass of 13 draws is one permutation of the 13 samples (not only 3 of each over 39),
  // and the passes are shuffled apart.
  std::vector<std::vector<int64_t>> passes(3);
  for (auto& pass : passes) {
    for (int i = 0; i < 13; ++i) pass.push_back(m.next({1.0}).doc);
    std::vector<int64_t> sorted = pass;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(13);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(sorted, all);
  }
  EXPECT_NE(passes[0], passes[1]);
  EXPECT_NE(passes[1], passes[2]);
}

// Several sources of different sizes: each source's draws, cut into passes of its size, are
// each one permutation of its samples, whatever the other sources do in between.
TEST(DataMixer, ProportionalEverySourcePassIsOnePermutation) {
  const std::vector<int64_t> sizes = {7, 11, 5};
  Mixer m(MixMode::proportional, equal_lengths(sizes, 3), 21);
  std::vector<std::vector<int64_t>> draws(3);  // [source] docs in draw order
  for (int i = 0; i < 400; ++i) {
    const SampleRef r = m.next({2.0, 1.0, 0.5});
    draws[r.source].push_back(r.doc);
  }
  for (int s = 0; s < 3; ++s) {
    const size_t n = sizes[s];
    ASSERT_GE(draws[s].size(), 3 * n) << s;
    std::vector<int64_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    std::set<std::vector<int64_t>> orders;
    for (size_t p = 0; p + n <= draws[s].size(); p += n) {
      std::vector<int64_t> pass(draws[s].begin() + p, draws[s].begin() + p + n);
      orders.insert(pass);
      std::sort(pass.begin(), pass.end());
      EXPECT_EQ(pass, all) << "source " << s << " pass " << p / n;
    }
    EXPECT_GT(orders.size(), 1u) << "source " << s << ": passes are not reshuffled";
  }
}

// telechat: every epoch's draws are the one pool (the same multiset of samples, copies
// included), each epoch in another order.
TEST(DataMixer, TelechatEveryEpochDrawsThePoolOnce) {
  Mixer m(MixMode::telechat, equal_lengths({20, 30, 40}, 5), 17);
  const std::vector<double> w = {2.0, 1.0, 0.5};
  std::vector<std::vector<std::pair<int32_t, int64_t>>> epochs(4);
  SampleRef r = m.next(w);
  std::map<std::pair<int32_t, int64_t>, int> pool;
  for (const SampleRef& p : m.pool()) ++pool[{p.source, p.doc}];
  while (m.epoch() <= 3) {
    epochs[m.epoch()].push_back({r.source, r.doc});
    r = m.next(w);
  }
  for (int e = 1; e <= 3; ++e) {
    std::map<std::pair<int32_t, int64_t>, int> got;
    for (const auto& d : epochs[e]) ++got[d];
    EXPECT_EQ(got, pool) << "epoch " << e;
  }
  for (int64_t d = 0; d < 20; ++d) EXPECT_EQ((pool.count({0, d}) ? pool.at({0, d}) : 0), 2) << d;  // w 2
  for (int64_t d = 0; d < 30; ++d) EXPECT_EQ((pool.count({1, d}) ? pool.at({1, d}) : 0), 1) << d;  // w 1
  EXPECT_NE(epochs[1], epochs[2]);
  EXPECT_NE(epochs[2], epochs[3]);
}

TEST(DataMixer, ScheduleInterpolatesLinearly) {
  std::vector<MixPoint> sched(2);
  sched[0].step = 100;
  sched[0].weights = {{"fin.jsonl", 1.0}, {"gen.jsonl", 9.0}};
  sched[1].step = 200;
  sched[1].weights = {{"fin.jsonl", 2.0}, {"gen.jsonl", 8.0}};
  const std::vector<std::string> names = {"gen.jsonl", "fin.jsonl", "code.jsonl"};
  const std::vector<double> base = {1.0, 1.0, 0.5};
  EXPECT_EQ(schedule_weights(sched, names, base, 0), (std::vector<double>{9.0, 1.0, 0.5}));
  EXPECT_EQ(schedule_weights(sched, names, base, 100), (std::vector<double>{9.0, 1.0, 0.5}));
  EXPECT_EQ(schedule_weights(sched, names, base, 150), (std::vector<double>{8.5, 1.5, 0.5}));
  EXPECT_EQ(schedule_weights(sched, names, base, 175), (std::vector<double>{8.25, 1.75, 0.5}));
  EXPECT_EQ(schedule_weights(sched, names, base, 500), (std::vector<double>{8.0, 2.0, 0.5}));
  EXPECT_EQ(schedule_weights({}, names, base, 7), base);
}

TEST(DataMixer, ScheduleRejectsUnknownSourcesAndBadSteps) {
  std::vector<MixPoint> sched(2);
  sched[0].step = 10;
  sched[0].weights = {{"gen.jsonl", 1.0}};
  sched[1].step = 5;
  try {
    validate_schedule(sched, {"gen.jsonl"});
    FAIL();
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), "data.schedule[1].step: 5 must be greater than the previous point's 10");
  }
  sched[1].step = 20;
  sched[1].weights = {{"fin.json", 1.0}};
  try {
    validate_schedule(sched, {"gen.jsonl", "fin.jsonl"});
    FAIL();
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()),
              "data.schedule[1].weights: unknown source \"fin.json\" (sources: gen.jsonl, fin.jsonl)");
  }
}

DataConfig rows_config(int64_t seq_len, bool packing) {
  DataConfig d;
  d.seq_len = seq_len;
  d.packing = packing;
  d.mix = MixMode::proportional;
  return d;
}

TEST(DataMixer, ScheduleShiftsSharesStepByStep) {
  // XuanYuan's finance ramp: fin:gen from 1:9 at step 0 to 1:4 from step 10 on. Unpacked rows
  // of equal-length samples, 10 rows per step: steps before the ramp hold exactly 1 finance
  // row, steps after it exactly 2.
  DataConfig d = rows_config(64, /*packing=*/false);
  d.schedule.resize(2);
  d.schedule[0].step = 0;
  d.schedule[0].weights = {{"fin", 1.0}, {"gen", 9.0}};
  d.schedule[1].step = 10;
  d.schedule[1].weights = {{"fin", 1.0}, {"gen", 4.0}};
  RowStream rows(equal_lengths({500, 500}, 20), {"gen", "fin"}, {1.0, 1.0}, d, 11, 10);
  std::vector<int64_t> fin_per_step;
  for (int step = 0; step < 20; ++step) {
    int64_t fin = 0;
    for (int i = 0; i < 10; ++i) fin += rows.next()[0].source == 1;
    fin_per_step.push_back(fin);
  }
  EXPECT_EQ(fin_per_step[0], 1);
  int64_t ramp = 0;
  for (int step = 1; step < 10; ++step) ramp += fin_per_step[step];
  // steps 1..9 at 1/10 + t/10 * (2/10 - 1/10): sum of shares * 10 rows = 9 + 4.5 = 13.5
  EXPECT_GE(ramp, 13);
  EXPECT_LE(ramp, 14);
  for (int step = 11; step < 20; ++step) EXPECT_EQ(fin_per_step[step], 2) << step;
}

TEST(DataPacker, BestFitDecreasingGolden) {
  // sorted 5,4,3,3,2,1 into 8: 5->A(3 left) 4->B(4) 3->A(0) 3->B(1) 2->C(6) 1->B(0)
  const auto bins = best_fit_pack({5, 4, 3, 3, 2, 1}, 8);
  ASSERT_EQ(bins.size(), 3u);
  EXPECT_EQ(bins[0], (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(bins[1], (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(bins[2], (std::vector<int64_t>{4}));
  // Every item exactly once, no bin over capacity, for a larger random case.
  std::vector<int64_t> lengths;
  for (int i = 0; i < 1000; ++i) lengths.push_back(1 + (i * 7919) % 512);
  const auto many = best_fit_pack(lengths, 512);
  std::vector<int> used(lengths.size(), 0);
  int64_t total = 0;
  for (const auto& b : many) {
    int64_t fill = 0;
    for (int64_t i : b) {
      ++used[i];
      fill += lengths[i];
    }
    EXPECT_LE(fill, 512);
    total += fill;
  }
  EXPECT_EQ(used, std::vector<int>(lengths.size(), 1));
  EXPECT_GT(double(total) / (many.size() * 512.0), 0.95);  // best-fit fills rows tightly
}

TEST(DataRows, PackedRowsTruncateOrDropOverlong) {
  DataConfig d = rows_config(16, /*packing=*/true);
  // Source 0: samples of 9 tokens (8 positions); every 5th has 40 tokens (over-long).
  std::vector<std::vector<int64_t>> lengths(1);
  for (int i = 0; i < 50; ++i) lengths[0].push_back(i % 5 == 4 ? 40 : 9);
  RowStream trunc(lengths, {"a"}, {1.0}, d, 1, 4);
  for (int i = 0; i < 40; ++i) {
    int64_t used = 0;
    for (const Piece& p : trunc.next()) {
      EXPECT_TRUE(p.length == 9 || p.length == 17) << p.length;  // 40 tokens -> 16 positions + 1
      used += p.length - 1;
    }
    EXPECT_LE(used, 16);
  }
  EXPECT_GT(trunc.truncated(), 0);
  EXPECT_EQ(trunc.dropped(), 0);
  d.overlong = "drop";
  RowStream drop(lengths, {"a"}, {1.0}, d, 1, 4);
  for (int i = 0; i < 40; ++i) {
    const Row r = drop.next();
    EXPECT_EQ(r.size(), 2u);  // two 8-position samples fill each 16-position row exactly
    for (const Piece& p : r) EXPECT_EQ(p.length, 9);
  }
  EXPECT_GT(drop.dropped(), 0);
  EXPECT_EQ(drop.truncated(), 0);
}

TEST(DataRows, PackedRowsKeepTheProportionalTokenShare) {
  // Unequal lengths, weights {2, 1, 0.5}: over 400 packed rows of 64 positions each source's
  // share of the row tokens is its normalized weight to within 1%.
  DataConfig d = rows_config(64, /*packing=*/true);
  std::vector<std::vector<int64_t>> lengths(3);
  for (int s = 0; s < 3; ++s)
    for (int i = 0; i < 300; ++i) lengths[s].push_back(2 + (i * 13 + s * 7) % 40);
  RowStream rows(lengths, {"a", "b", "c"}, {2.0, 1.0, 0.5}, d, 4, 8);
  for (int i = 0; i < 400; ++i) rows.next();
  const auto& t = rows.source_tokens();
  const double total = t[0] + t[1] + t[2];
  EXPECT_NEAR(t[0] / total, 4.0 / 7, 0.01);
  EXPECT_NEAR(t[1] / total, 2.0 / 7, 0.01);
  EXPECT_NEAR(t[2] / total, 1.0 / 7, 0.01);
}

}  // namespace
}  // namespace kiln
