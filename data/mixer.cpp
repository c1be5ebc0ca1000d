// Mixer: telechat pool and proportional (furthest-behind-first) blending (see mixer.h).
#include "data/mixer.h"

#include <algorithm>
#include <cmath>

#include "base/config.h"
#include "base/error.h"

namespace kiln {

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

std::mt19937_64 make_rng(uint64_t seed, uint64_t a, uint64_t b) {
  return std::mt19937_64(splitmix64(splitmix64(splitmix64(seed) ^ a) ^ b));
}

double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

void shuffle(std::vector<int64_t>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng() % i]);
}

Mixer::Mixer(MixMode mode, std::shared_ptr<const SampleLengths> lengths, uint64_t seed,
             MixerOptions options)
    : mode_(mode),
      lengths_ptr_(std::move(lengths)),
      lengths_(*lengths_ptr_),
      max_length_(std::move(options.max_length)),
      seed_(seed),
      redraw_(options.redraw_each_epoch) {
  const size_t n = lengths_.size();
  KILN_CHECK(n > 0, "mixer needs a source");
  KILN_CHECK(max_length_.empty() || max_length_.size() == n, "max_length for ", max_length_.size(), " of ", n,
             " sources");
  tokens_.assign(n, 0);
  target_.assign(n, 0.0);
  samples_.assign(n, 0);
  perm_.resize(n);
  cursor_.assign(n, 0);
  pass_.assign(n, 0);
}

std::mt19937_64 telechat_pool_rng(uint64_t seed, int64_t draw) {
  return make_rng(seed, 0x7e1ec4a7, static_cast<uint64_t>(draw));
}

std::vector<SampleRef> telechat_pool(const SampleLengths& lengths, const std::vector<double>& weights,
                                     std::mt19937_64& rng) {
  std::vector<SampleRef> pool;
  for (size_t s = 0; s < lengths.size(); ++s) {
    const double w = weights[s];
    const int64_t whole = static_cast<int64_t>(std::floor(w));
    const double frac = w - static_cast<double>(whole);
    for (int64_t d = 0; d < static_cast<int64_t>(lengths[s].size()); ++d) {
      const int64_t copies = whole + (frac > 0 && uniform01(rng) < frac ? 1 : 0);
      for (int64_t c = 0; c < copies; ++c) pool.push_back({static_cast<int32_t>(s), d});
    }
  }
  return pool;
}

int64_t Mixer::counted(int32_t source, int64_t doc) const {
  const int64_t len = lengths_[source][doc];
  return max_length_.empty() ? len : std::min(len, max_length_[source]);
}

void Mixer::start_epoch(const std::vector<double>& weights) {
  // The pool is drawn once (or every epoch with redraw); draws are repeated until one comes
  // out non-empty (an all-below-one mixture can draw nothing).
  if (drawn_.empty() || redraw_) {
    drawn_.clear();
    for (int tries = 0; drawn_.empty(); ++tries) {
      KILN_CHECK(tries < 1000, "telechat pool stays empty: weights too small");
      auto rng = telechat_pool_rng(seed_, pools_drawn_++);
      drawn_ = telechat_pool(lengths_, weights, rng);
    }
  }
  std::vector<int64_t> order(drawn_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  auto rng = make_rng(seed_, 0x5b0ff1e, static_cast<uint64_t>(epoch_));
  shuffle(order, rng);
  pool_.resize(drawn_.size());
  for (size_t i = 0; i < order.size(); ++i) pool_[i] = drawn_[order[i]];
  pool_pos_ = 0;
  ++epoch_;
}

SampleRef Mixer::next(const std::vector<double>& weights) {
  KILN_CHECK(weights.size() == lengths_.size(), "weights ", weights.size(), " for ", lengths_.size(),
             " sources");
  SampleRef r;
  if (mode_ == MixMode::telechat) {
    if (pool_pos_ >= pool_.size()) start_epoch(weights);
    r = pool_[pool_pos_++];
  } else {
    double sum = 0;
    for (double w : weights) sum += w;
    KILN_CHECK(sum > 0, "weights sum to zero");
    double best = -1e300;
    for (size_t s = 0; s < weights.size(); ++s) {
      if (weights[s] <= 0 || lengths_[s].empty()) continue;
      const double deficit = target_[s] + weights[s] / sum - static_cast<double>(tokens_[s]);
      if (deficit > best) {
        best = deficit;
        r.source = static_cast<int32_t>(s);
      }
    }
    auto& perm = perm_[r.source];
    const int64_t n = static_cast<int64_t>(lengths_[r.source].size());
    if (perm.empty() || cursor_[r.source] >= n) {
      perm.resize(n);
      for (int64_t i = 0; i < n; ++i) perm[i] = i;
      auto rng =
          make_rng(seed_, static_cast<uint64_t>(r.source) + 1, static_cast<uint64_t>(pass_[r.source]++));
      shuffle(perm, rng);
      cursor_[r.source] = 0;
    }
    r.doc = perm[cursor_[r.source]++];
    // Every source's target grows by its current share of the drawn tokens, so a schedule's
    // new weights govern the tokens drawn from now on (not a catch-up on the past).
    const double len = static_cast<double>(counted(r.source, r.doc));
    for (size_t s = 0; s < weights.size(); ++s) target_[s] += weights[s] / sum * len;
  }
  tokens_[r.source] += counted(r.source, r.doc);
  ++samples_[r.source];
  return r;
}

void validate_schedule(const std::vector<MixPoint>& schedule, const std::vector<std::string>& names) {
  int64_t prev = -1;
  for (size_t i = 0; i < schedule.size(); ++i) {
    const std::string key = str("data.schedule[", i, "]");
    if (schedule[i].step <= prev)
      user_error(key, ".step: ", schedule[i].step, " must be greater than the previous point's ", prev);
    prev = schedule[i].step;
    double sum = 0;
    for (const auto& [name, w] : schedule[i].weights) {
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        std::string all;
        for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
        user_error(key, ".weights: unknown source \"", name, "\" (sources: ", all, ")");
      }
      if (!(w >= 0) || !std::isfinite(w)) user_error(key, ".weights.", name, ": ", w, " must be >= 0");
      sum += w;
    }
    if (!schedule[i].weights.empty() && sum <= 0 && schedule[i].weights.size() == names.size())
      user_error(key, ".weights: sum to zero (at least one source needs a weight > 0)");
  }
}

std::vector<double> schedule_weights(const std::vector<MixPoint>& schedule,
                                     const std::vector<std::string>& names, const std::vector<double>& base,
                                     double step) {
  if (schedule.empty()) return base;
  auto at = [&](size_t i) {
    std::vector<double> w = base;
    for (size_t s = 0; s < names.size(); ++s) {
      auto it = schedule[i].weights.find(names[s]);
      if (it != schedule[i].weights.end()) w[s] = it->second;
    }
    return w;
  };
  if (step <= schedule.front().step) return at(0);
  if (step >= schedule.back().step) return at(schedule.size() - 1);
  size_t i = 0;
  while (schedule[i + 1].step < step) ++i;
  const auto a = at(i), b = at(i + 1);
  const double t = (step - schedule[i].step) / double(schedule[i + 1].step - schedule[i].step);
  std::vector<double> w(a.size());
  for (size_t s = 0; s < w.size(); ++s) w[s] = a[s] + t * (b[s] - a[s]);
  return w;
}

}  // namespace kiln
