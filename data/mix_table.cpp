// Per-source shares of an epoch under data.mix (see mix_table.h).
#include "data/mix_table.h"

#include <cstdio>
#include <filesystem>

#include "data/prep.h"
#include "data/row_stream.h"
#include "data/token_store.h"
#include "base/config.h"
#include "base/error.h"

namespace kiln {

namespace {

// Tokens sample `doc` puts into rows under its source's data.overlong (0: none, dropped).
int64_t row_tokens(int64_t length, int64_t seq_len, const std::string& policy) {
  int64_t n = 0;
  for (const Piece& p : sample_pieces(0, 0, length, seq_len, policy)) n += p.length;
  return n;
}

}  // namespace

std::vector<MixShare> mix_shares(const SampleLengths& lengths, const std::vector<std::string>& names,
                                 const std::vector<double>& weights, const std::vector<std::string>& formats,
                                 const DataConfig& data, uint64_t seed) {
  const size_t n = lengths.size();
  KILN_CHECK(names.size() == n && weights.size() == n, "mix_shares: ", n, " sources");
  std::vector<std::string> policy(n);
  std::vector<MixShare> out(n);
  for (size_t s = 0; s < n; ++s) {
    policy[s] = resolve_overlong(data.overlong, s < formats.size() ? formats[s] : "", names[s]);
    out[s].name = names[s];
    out[s].weight = weights[s];
    for (int64_t len : lengths[s]) {
      const int64_t t = row_tokens(len, data.seq_len, policy[s]);
      out[s].samples += t > 0;
      out[s].tokens += t;
    }
  }
  const std::vector<double> w = schedule_weights(data.schedule, names, weights, 0);
  if (data.mix == MixMode::telechat) {
    MixerOptions opt;
    opt.redraw_each_epoch = data.redraw_each_epoch;
    Mixer mixer(MixMode::telechat, lengths, seed, opt);
    mixer.next(w);  // draws the first pool
    for (const SampleRef& r : mixer.pool()) {
      const int64_t t = row_tokens(lengths[r.source][r.doc], data.seq_len, policy[r.source]);
      if (t == 0) continue;
      out[r.source].epoch_samples += 1;
      out[r.source].epoch_tokens += static_cast<double>(t);
    }
  } else {
    double wsum = 0, total = 0;
    for (size_t s = 0; s < n; ++s) {
      if (out[s].samples > 0) wsum += w[s];
      total += static_cast<double>(out[s].tokens);
    }
    for (size_t s = 0; s < n; ++s) {
      if (out[s].samples == 0 || wsum <= 0) continue;
      out[s].epoch_tokens = w[s] / wsum * total;
      out[s].epoch_samples = out[s].epoch_tokens * out[s].samples / static_cast<double>(out[s].tokens);
    }
  }
  double samples = 0, tokens = 0;
  for (const auto& m : out) samples += m.epoch_samples, tokens += m.epoch_tokens;
  for (auto& m : out) {
    m.sample_share = samples > 0 ? m.epoch_samples / samples : 0;
    m.token_share = tokens > 0 ? m.epoch_tokens / tokens : 0;
    m.passes = m.samples > 0 ? m.epoch_samples / static_cast<double>(m.samples) : 0;
  }
  return out;
}

std::string format_mix_table(const std::vector<MixShare>& shares, MixMode mix) {
  std::string out = str("data.mix: ", mix,
                        mix == MixMode::telechat ? " (one epoch = TeleChat's pool: floor(w) copies + one more with "
                                            "probability frac(w))"
                                          : " (token shares follow the normalized weights; one epoch = the "
                                            "mixture's tokens)",
                        "\n");
  char line[512];
  std::snprintf(line, sizeof(line), "  %-24s %10s %12s %8s %12s %14s %8s %8s %7s\n", "source", "samples",
                "tokens", "weight", "samples/ep", "tokens/ep", "%samp", "%tok", "passes");
  out += line;
  for (const auto& m : shares) {
    std::snprintf(line, sizeof(line), "  %-24s %10lld %12lld %8.4g %12.1f %14.1f %7.2f%% %7.2f%% %7.3f\n",
                  m.name.c_str(), static_cast<long long>(m.samples), static_cast<long long>(m.tokens),
                  m.weight, m.epoch_samples, m.epoch_tokens, 100 * m.sample_share, 100 * m.token_share,
                  m.passes);
    out += line;
  }
  out.pop_back();  // the caller's log line ends it
  return out;
}

std::string describe_mixture(const Config& cfg) {
  if (cfg.data.mixture.empty()) return "";
  // plan may run before the data is there: say so rather than fail
  if (!std::filesystem::exists(cfg.data.mixture))
    return str("data.mix: ", cfg.data.mix, " (no table: data.mixture ", cfg.data.mixture, " not found)\n");
  if (!std::filesystem::is_directory(cfg.data.mixture) && cfg.tokenizer.empty())
    return str("data.mix: ", cfg.data.mix, " (no table: preparing ", cfg.data.mixture, " needs a tokenizer)\n");
  TokenStore store(ensure_prepared(cfg, cfg.data.mixture));
  SampleLengths lengths;
  std::vector<std::string> names, formats;
  std::vector<double> weights;
  for (const auto& s : store.sources()) {
    std::vector<int64_t> l(s.docs);
    for (int64_t d = 0; d < s.docs; ++d) l[d] = s.doc_length(d);
    lengths.push_back(std::move(l));
    names.push_back(s.name);
    weights.push_back(s.weight);
    formats.push_back(s.format);
  }
  validate_schedule(cfg.data.schedule, names);
  return format_mix_table(
             mix_shares(lengths, names, weights, formats, cfg.data, static_cast<uint64_t>(cfg.train.seed)),
             cfg.data.mix) +
         "\n";
}

}  // namespace kiln
