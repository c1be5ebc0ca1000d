// Data fidelity (issue 12): over-long pretraining documents split into pieces that train every
// token once per epoch with no attention across pieces; sources in data.json order; TeleChat's
// pool drawn once (or redrawn); TeleChat's trained role tokens; the mixer's share table.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "data/mix_table.h"
#include "data/mixer.h"
#include "data/prep.h"
#include "data/row_stream.h"
#include "data/token_store.h"
#include "models/llama.h"
#include "test_data_util.h"
#include "trainer/config.h"
#include "base/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// A text .jsonl of `n` documents of 1..~100 words (at seq_len 16 most are over-long).
std::string long_docs_jsonl(int n) {
  static const char* words[] = {"the",  "quick", "brown", "fox", "jumps",
                                "over", "lazy",  "dog",   "sea", "moon"};
  std::string out;
  for (int d = 0; d < n; ++d) {
    std::string text;
    for (int w = 0; w < 1 + (d * 37) % 100; ++w) text += std::string(w ? " " : "") + words[(d + w * 3) % 10];
    out += nlohmann::json{{"text", text}}.dump() + "\n";
  }
  return out;
}

std::string prep_dir(const TempDir& dir, const std::string& data_json, int64_t seq_len = 0) {
  PrepOptions opt;
  opt.data_json = data_json;
  opt.tokenizer = test::tokenizer_path();
  opt.out_dir = dir / "store";
  opt.workers = 1;
  opt.seq_len = seq_len;
  opt.progress = false;
  run_prep(opt);
  return opt.out_dir;
}

struct StoreData {
  SampleLengths lengths;
  std::vector<std::string> names, formats;
  std::vector<double> weights;
};
StoreData store_data(const TokenStore& store) {
  StoreData out;
  for (const auto& s : store.sources()) {
    std::vector<int64_t> l(s.docs);
    for (int64_t d = 0; d < s.docs; ++d) l[d] = s.doc_length(d);
    out.lengths.push_back(l);
    out.names.push_back(s.name);
    out.formats.push_back(s.format);
    out.weights.push_back(s.weight);
  }
  return out;
}

TEST(DataSplit, AutoSplitsTextAndTruncatesSft) {
  EXPECT_EQ(resolve_overlong("auto", "text", "a"), "split");
  EXPECT_EQ(resolve_overlong("auto", "firefly", "a"), "truncate");
  EXPECT_EQ(resolve_overlong("auto", "", "a"), "truncate");  // a store without recorded formats
  EXPECT_EQ(resolve_overlong("drop", "text", "a"), "drop");
  try {
    resolve_overlong("split", "alpaca", "sft.jsonl");
    FAIL() << "split accepted for an SFT source";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("source \"sft.jsonl\" is alpaca (SFT)"), std::string::npos)
        << e.what();
  }
  // 40 tokens at seq_len 16: pieces [0,17) [16,33) [32,40): labels 1..39, each once.
  const auto p = sample_pieces(0, 7, 40, 16, "split");
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].offset, 0);
  EXPECT_EQ(p[0].length, 17);
  EXPECT_EQ(p[1].offset, 16);
  EXPECT_EQ(p[1].length, 17);
  EXPECT_EQ(p[2].offset, 32);
  EXPECT_EQ(p[2].length, 8);
  EXPECT_EQ(sample_pieces(0, 7, 33, 16, "split").size(), 2u);  // 32 labels = two full pieces
  EXPECT_EQ(sample_pieces(0, 7, 40, 16, "truncate")[0].length, 17);
  EXPECT_TRUE(sample_pieces(0, 7, 40, 16, "drop").empty());
}

TEST(DataSplit, PretrainingTrainsEveryTokenOncePerEpoch) {
  // 60 text documents, most longer than seq_len 16, one source, proportional: one epoch is
  // one pass over the documents. With packing off the rows come in draw order, so the first
  // P rows (P = the pieces of all documents) are exactly epoch 1.
  TempDir dir;
  test::write_text(dir / "long.jsonl", long_docs_jsonl(60));
  const std::string store_dir = prep_dir(dir, dir / "long.jsonl", 16);
  TokenStore store(store_dir);
  ASSERT_EQ(store.sources()[0].format, "text");
  const StoreData sd = store_data(store);
  int64_t corpus_tokens = 0, pieces = 0, overlong = 0;
  for (int64_t len : sd.lengths[0]) {
    corpus_tokens += len;
    pieces += static_cast<int64_t>(sample_pieces(0, 0, len, 16, "split").size());
    overlong += len - 1 > 16;
  }
  const int64_t docs = store.sources()[0].docs;
  ASSERT_GT(overlong, 30);
  // stats.json reports the split.
  const auto stats = nlohmann::json::parse(test::read_text(store_dir + "/stats.json"));
  EXPECT_EQ(stats["sources"][0]["overlong_policy"], "split");
  EXPECT_EQ(stats["sources"][0]["overlong"].get<int64_t>(), overlong);
  EXPECT_EQ(stats["sources"][0]["split_pieces"].get<int64_t>(), pieces - (docs - overlong));

  DataConfig d;  // overlong: auto -> split for text
  d.seq_len = 16;
  d.packing = false;
  RowStream rows(sd.lengths, sd.names, sd.weights, d, 3, 4, sd.formats);
  std::vector<Row> epoch;
  std::map<int64_t, std::vector<int>> trained;  // doc -> times each label position was trained
  for (int64_t i = 0; i < pieces; ++i) {
    epoch.push_back(rows.next());
    ASSERT_EQ(epoch.back().size(), 1u);
    const Piece& p = epoch.back()[0];
    auto& t = trained[p.doc];
    t.resize(sd.lengths[0][p.doc], 0);
    for (int64_t k = p.offset + 1; k < p.offset + p.length; ++k) ++t[k];
  }
  ASSERT_EQ(static_cast<int64_t>(trained.size()), docs);
  for (const auto& [doc, t] : trained)
    for (size_t k = 1; k < t.size(); ++k) ASSERT_EQ(t[k], 1) << "doc " << doc << " label " << k;
  EXPECT_EQ(rows.split(), overlong);
  EXPECT_EQ(rows.split_pieces(), pieces - (docs - overlong));
  EXPECT_EQ(rows.truncated(), 0);
  // The batches of that epoch train exactly the corpus's labels: every token but each <s>.
  const Batch b = make_batch(store, epoch, 16, store.pad_id());
  EXPECT_EQ(b.loss_tokens, corpus_tokens - docs);
  // Truncating (the old default) trains only the first seq_len labels of each document.
  d.overlong = "truncate";
  RowStream trunc(sd.lengths, sd.names, sd.weights, d, 3, 4, sd.formats);
  std::vector<Row> t_epoch;
  for (int64_t i = 0; i < docs; ++i) t_epoch.push_back(trunc.next());
  EXPECT_LT(make_batch(store, t_epoch, 16, store.pad_id()).loss_tokens, corpus_tokens - docs);

  // Through the DataLoader with packing: over the first step of `pieces` rows, each row holds
  // whole pieces and metrics' counters see every split document.
  Config cfg;
  cfg.data = d;
  cfg.data.overlong = "auto";
  cfg.data.packing = true;
  cfg.data.mixture = store_dir;
  cfg.data.prefetch = 1;
  cfg.train.micro_batch_size = 4;
  DataLoader loader(cfg, 0, 1, 4);
  int64_t labels = 0;
  for (int i = 0; i < 30; ++i) labels += loader.next().loss_tokens;
  EXPECT_GT(loader.split(), 0);
  EXPECT_GT(loader.split_pieces(), loader.split());
  EXPECT_EQ(loader.truncated(), 0);
  EXPECT_GT(labels, 0);
}

// Writes a one-source text store from token lists (every token trained).
std::string write_store(const std::string& dir, const std::vector<std::vector<int32_t>>& docs) {
  fs::create_directories(dir);
  TokenStoreWriter w(dir, "source_0");
  int64_t loss = 0;
  for (const auto& d : docs) {
    w.append(d, std::vector<uint8_t>(d.size(), 1));
    loss += static_cast<int64_t>(d.size());
  }
  w.finish();
  nlohmann::json m = {{"format", "kiln-token-store"},
                      {"version", 1},
                      {"tokenizer", "none"},
                      {"vocab_size", 64},
                      {"bos_id", 1},
                      {"eos_id", 2},
                      {"pad_id", 0},
                      {"sources",
                       {{{"name", "a.jsonl"},
                         {"weight", 1.0},
                         {"format", "text"},
                         {"prefix", "source_0"},
                         {"docs", w.docs()},
                         {"tokens", w.tokens()},
                         {"loss_tokens", loss}}}}};
  test::write_text(dir + "/manifest.json", m.dump());
  return dir;
}

TEST(DataSplit, NoAttentionAcrossPieces) {
  // Document A (2*16 + 6 tokens) splits into three pieces at seq_len 16; its last piece shares
  // a row with document B, placed before it. The loss of A's last piece does not change when
  // B or A's earlier pieces change: positions restart at 0 on every piece, so attention stops
  // at the piece boundary.
  constexpr int64_t L = 16;
  auto doc = [](int64_t n, int32_t salt) {
    std::vector<int32_t> t(n);
    for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>(3 + (i * 7 + salt) % 60);
    return t;
  };
  std::vector<int32_t> a = doc(2 * L + 6, 0), a2 = a, b = doc(9, 5), b2 = doc(9, 11);
  for (int64_t i = 0; i < 2 * L; ++i) a2[i] = static_cast<int32_t>(3 + (i * 13 + 1) % 60);  // earlier pieces
  TempDir dir;
  TokenStore s1(write_store(dir / "s1", {a, b})), s2(write_store(dir / "s2", {a2, b2}));
  const auto pieces = sample_pieces(0, 0, static_cast<int64_t>(a.size()), L, "split");
  ASSERT_EQ(pieces.size(), 3u);
  const std::vector<Row> rows = {{{0, 1, 9, 0}, pieces[2]}, {pieces[0]}, {pieces[1]}};
  ModelConfig mc;
  mc.vocab_size = 64;
  mc.hidden_size = 32;
  mc.num_layers = 2;
  mc.num_heads = 4;
  mc.num_kv_heads = 2;
  mc.ffn_hidden_size = 64;
  mc.max_seq_len = 64;
  at::manual_seed(0);
  Llama model(mc);
  model->eval();
  at::NoGradGuard no_grad;
  auto last_piece_losses = [&](const TokenStore& s) {
    Batch batch = make_batch(s, rows, L, s.pad_id());
    EXPECT_TRUE(batch.packed);
    at::Tensor logits = model->forward(batch);  // (B, T, V)
    at::Tensor per = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), batch.labels.reshape(-1),
                                            {}, at::Reduction::None, kIgnoreIndex)
                         .view(batch.labels.sizes());
    // Row 0: B takes positions 0..7, A's last piece 8..12.
    EXPECT_EQ(batch.position_ids[0][8].item<int64_t>(), 0);
    return per[0].slice(0, 8, 13).clone();
  };
  const at::Tensor l1 = last_piece_losses(s1), l2 = last_piece_losses(s2);
  EXPECT_TRUE(at::equal(l1, l2)) << l1 << l2;
  EXPECT_GT(l1.sum().item<double>(), 0);
  // The same check sees attention across a boundary: without the restart (positions running
  // on from B), A's last piece would see B and its losses would change with B.
  Batch joined = make_batch(s1, rows, L, s1.pad_id()), joined2 = make_batch(s2, rows, L, s2.pad_id());
  for (Batch* bt : {&joined, &joined2})
    for (int64_t t = 8; t < 13; ++t) bt->position_ids[0][t] = 9 + (t - 8);
  auto loss_of = [&](const Batch& bt) {
    at::Tensor logits = model->forward(bt);
    return at::cross_entropy_loss(logits[0], bt.labels[0], {}, at::Reduction::None, kIgnoreIndex)
        .slice(0, 8, 13);
  };
  EXPECT_FALSE(at::equal(loss_of(joined), loss_of(joined2)));
}

TEST(DataOrder, SourcesFollowDataJsonOrder) {
  // Names sort the other way round from the file's order.
  TempDir dir;
  test::write_text(dir / "zeta.jsonl", "{\"text\": \"the quick brown fox\"}\n{\"text\": \"jumps over\"}\n");
  test::write_text(dir / "alpha.jsonl", "{\"text\": \"lazy dog sea moon\"}\n");
  test::write_text(dir / "mid.jsonl", "{\"text\": \"hill light town\"}\n");
  test::write_text(dir / "data.json", R"({"zeta.jsonl": 1.0, "alpha.jsonl": 2.0, "mid.jsonl": 0.5})");
  const std::vector<std::string> want = {"zeta.jsonl", "alpha.jsonl", "mid.jsonl"};
  const auto mix = read_mixture(dir / "data.json");
  ASSERT_EQ(mix.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(mix[i].name, want[i]);
  const std::string store_dir = prep_dir(dir, dir / "data.json", 8);
  TokenStore store(store_dir);
  const auto stats = nlohmann::json::parse(test::read_text(store_dir + "/stats.json"));
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(store.sources()[i].name, want[i]);
    EXPECT_EQ(stats["sources"][i]["name"], want[i]);
  }
  EXPECT_EQ(store.sources()[0].docs, 2);  // source_0 holds zeta's two samples
  EXPECT_EQ(store.sources()[1].weight, 2.0);
  // The mix table (the log's lines) lists them in that order too.
  DataConfig d;
  const StoreData sd = store_data(store);
  const std::string table =
      format_mix_table(mix_shares(sd.lengths, sd.names, sd.weights, sd.formats, d, 1), MixMode::proportional);
  EXPECT_LT(table.find("zeta.jsonl"), table.find("alpha.jsonl"));
  EXPECT_LT(table.find("alpha.jsonl"), table.find("mid.jsonl"));
}

// TeleChat's get_weight_data, written out on its own from its description, fed kiln's random
// stream: per source in order, w < 1 keeps a sample when u < w; w >= 1 takes floor(w) copies of
// the whole source and then one more of each sample with u < frac(w).
std::map<std::pair<int32_t, int64_t>, int> get_weight_data(const std::vector<int64_t>& sizes,
                                                           const std::vector<double>& weights,
                                                           std::mt19937_64 rng) {
  std::map<std::pair<int32_t, int64_t>, int> copies;
  for (size_t s = 0; s < sizes.size(); ++s) {
    const double w = weights[s];
    if (w < 1) {
      for (int64_t d = 0; d < sizes[s]; ++d)
        if (uniform01(rng) < w) ++copies[{static_cast<int32_t>(s), d}];
      continue;
    }
    const int whole = static_cast<int>(w);
    for (int c = 0; c < whole; ++c)
      for (int64_t d = 0; d < sizes[s]; ++d) ++copies[{static_cast<int32_t>(s), d}];
    const double frac = w - whole;
    if (frac == 0) continue;
    for (int64_t d = 0; d < sizes[s]; ++d)
      if (uniform01(rng) < frac) ++copies[{static_cast<int32_t>(s), d}];
  }
  return copies;
}

std::map<std::pair<int32_t, int64_t>, int> counts(const std::vector<SampleRef>& pool) {
  std::map<std::pair<int32_t, int64_t>, int> c;
  for (const SampleRef& r : pool) ++c[{r.source, r.doc}];
  return c;
}

TEST(DataTelechat, PoolIsGetWeightDataDrawnOnce) {
  const std::vector<double> w = {2.0, 1.0, 0.5, 1.42};
  const std::vector<int64_t> sizes = {30, 40, 300, 200};
  SampleLengths lengths;
  for (int64_t n : sizes) lengths.emplace_back(n, 5);
  const uint64_t seed = 99;
  const auto expected = get_weight_data(sizes, w, telechat_pool_rng(seed, 0));
  std::vector<int64_t> per_source(4, 0);
  for (const auto& [key, n] : expected) per_source[key.first] += n;
  EXPECT_EQ(per_source[0], 60);
  EXPECT_EQ(per_source[1], 40);

  Mixer m(MixMode::telechat, lengths, seed);
  m.next(w);
  const auto epoch1 = m.pool();
  EXPECT_EQ(counts(epoch1), expected);
  std::vector<int64_t> got(4, 0);
  for (const SampleRef& r : epoch1) ++got[r.source];
  EXPECT_EQ(got, per_source);
  for (size_t i = 1; i < epoch1.size(); ++i) m.next(w);
  EXPECT_EQ(m.epoch(), 1);
  m.next(w);  // epoch 2: the same pool, re-shuffled
  EXPECT_EQ(m.epoch(), 2);
  EXPECT_EQ(m.pools_drawn(), 1);
  EXPECT_EQ(counts(m.pool()), expected);
  std::vector<std::pair<int32_t, int64_t>> o1, o2;
  for (const SampleRef& r : epoch1) o1.push_back({r.source, r.doc});
  for (const SampleRef& r : m.pool()) o2.push_back({r.source, r.doc});
  EXPECT_NE(o1, o2);

  // redraw_each_epoch: epoch 2 draws pool number 1 from its own stream.
  MixerOptions redraw;
  redraw.redraw_each_epoch = true;
  Mixer r(MixMode::telechat, lengths, seed, redraw);
  r.next(w);
  EXPECT_EQ(counts(r.pool()), expected);
  for (size_t i = 1; i < r.pool().size(); ++i) r.next(w);
  r.next(w);
  EXPECT_EQ(r.pools_drawn(), 2);
  const auto second = counts(r.pool());
  EXPECT_NE(second, expected);
  EXPECT_EQ(second, get_weight_data(sizes, w, telechat_pool_rng(seed, 1)));
}

TEST(DataTelechat, ScheduleNeedsRedraw) {
  DataConfig d;
  d.mix = MixMode::telechat;
  d.schedule.push_back({0, {{"a", 1.0}}});
  try {
    RowStream rows(SampleLengths{{5, 5}}, {"a"}, {1.0}, d, 1, 2);
    FAIL() << "telechat + schedule accepted without redraw";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("data.redraw_each_epoch: true"), std::string::npos) << e.what();
  }
  d.redraw_each_epoch = true;
  RowStream rows(SampleLengths{{5, 5}}, {"a"}, {1.0}, d, 1, 2);
  EXPECT_FALSE(rows.next().empty());
}

TEST(DataTelechat, TemplateTrainsRoleTokensAsLossFn) {
  // TeleChat's loss_fn trains the labels from each <_bot> through its <_end>, and each <_user>:
  // 4 more than the answers and their <_end> on a two-turn sample.
  const Tokenizer& tok = test::tokenizer();
  Sample s;
  s.turns = {{"user", "q one"}, {"assistant", "a one"}, {"user", "q two"}, {"assistant", "a two"}};
  SampleEncoder enc(tok, chat_template("telechat", {}), "all_turns");
  const EncodedSample e = enc.encode(s);
  EXPECT_EQ(test::render(tok, e), "«<s>»[«<_user>»]q one[«<_bot>»a one«<_end>»«<_user>»]q two[«<_bot>»a two«<_end>»]");
  int64_t trained = 0, answers = 0;
  for (size_t k = 1; k < e.tokens.size(); ++k) trained += e.mask[k];
  for (const char* a : {"a one", "a two"})
    answers += static_cast<int64_t>(tok.encode(a).size()) + 1;  // + <_end>
  EXPECT_EQ(trained, answers + 4);
  // TeleChat's rule recomputed from the ids: mask[bot..end] and mask[user] (labels are tokens 1..).
  const int32_t user = tok.piece_id("<_user>"), bot = tok.piece_id("<_bot>"), end = tok.piece_id("<_end>");
  std::vector<uint8_t> theirs(e.tokens.size(), 0);
  for (size_t i = 0; i < e.tokens.size(); ++i) {
    if (e.tokens[i] == user) theirs[i] = 1;
    if (e.tokens[i] == bot)
      for (size_t j = i; j < e.tokens.size(); ++j) {
        theirs[j] = 1;
        if (e.tokens[j] == end) break;
      }
  }
  for (size_t k = 1; k < e.tokens.size(); ++k) EXPECT_EQ(e.mask[k], theirs[k]) << k;
  // last_turn: only the last turn's role tokens and answer.
  SampleEncoder last(tok, chat_template("telechat", {}), "last_turn");
  EXPECT_EQ(test::render(tok, last.encode(s)),
            "«<s>»«<_user>»q one«<_bot>»a one«<_end>»[«<_user>»]q two[«<_bot>»a two«<_end>»]");
}

TEST(DataMixTable, ProportionalVersusTelechatShares) {
  // TeleChat's data.json case: sources of 40 and 10 samples at weights 1:1.
  SampleLengths lengths = {std::vector<int64_t>(40, 9), std::vector<int64_t>(10, 9)};
  DataConfig d;
  d.seq_len = 16;
  const std::vector<std::string> names = {"big.jsonl", "small.jsonl"};
  auto prop = mix_shares(lengths, names, {1.0, 1.0}, {"text", "text"}, d, 1);
  EXPECT_DOUBLE_EQ(prop[0].token_share, 0.5);
  EXPECT_DOUBLE_EQ(prop[1].sample_share, 0.5);
  EXPECT_DOUBLE_EQ(prop[0].epoch_samples, 25.0);  // 450 tokens per epoch, half each
  EXPECT_DOUBLE_EQ(prop[1].passes, 2.5);
  d.mix = MixMode::telechat;
  auto tc = mix_shares(lengths, names, {1.0, 1.0}, {"text", "text"}, d, 1);
  EXPECT_DOUBLE_EQ(tc[0].sample_share, 0.8);
  EXPECT_DOUBLE_EQ(tc[1].sample_share, 0.2);
  EXPECT_DOUBLE_EQ(tc[0].epoch_tokens, 360.0);
  EXPECT_EQ(tc[1].samples, 10);
  const std::string table = format_mix_table(tc, MixMode::telechat);
  EXPECT_NE(table.find("data.mix: telechat"), std::string::npos);
  EXPECT_NE(table.find("80.00%"), std::string::npos) << table;
  EXPECT_NE(table.find("20.00%"), std::string::npos) << table;
}

}  // namespace
}  // namespace kiln
