// Mixer: which sample comes next, from several weighted sources.
//   telechat      TeleChat's pool (its get_weight_data), drawn once: a source of weight w < 1
//                 keeps each sample with probability w; w >= 1 gives floor(w) copies plus one
//                 more with probability frac(w). Every epoch re-shuffles (seeded per epoch) that
//                 same pool, as TeleChat trains every epoch on the one dataset it built;
//                 redraw_each_epoch draws a fresh pool (with the weights then in force) instead.
//   proportional  each source's share of drawn tokens tracks its normalized weight: the source
//                 furthest behind its target goes next (target_i grows by p_i * L for every
//                 sample of L tokens drawn, p the normalized weights then in force; with fixed
//                 weights that is p_i * T after T tokens), as Megatron's blended datasets do
//                 with sample counts. Inside a source,
//                 samples come in a seeded permutation, reshuffled every pass.
// Weights may change between calls (data.schedule); a telechat pool picks them up when a pool
// is drawn (so a schedule needs redraw_each_epoch). Randomness is our own (splitmix64 / mt19937_64 bits),
// portable across platforms.
#pragma once
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/config.h"

namespace kiln {

struct MixPoint;

struct SampleRef {
  int32_t source = 0;
  int64_t doc = 0;
};

using SampleLengths = std::vector<std::vector<int64_t>>;  // [source][doc] tokens

struct MixerOptions {
  // [source] the most tokens one sample counts for (proportional's token shares); empty = no
  // cap. A truncated source counts seq_len + 1, a split one its whole length.
  std::vector<int64_t> max_length;
  bool redraw_each_epoch = false;  // telechat: a fresh pool every epoch instead of one pool
};

class Mixer {
 public:
  // lengths: tokens of each sample; shared, not copied (a mixture has many millions of samples).
  Mixer(MixMode mode, std::shared_ptr<const SampleLengths> lengths, uint64_t seed,
        MixerOptions options = {});
  Mixer(MixMode mode, SampleLengths lengths, uint64_t seed, MixerOptions options = {})
      : Mixer(mode, std::make_shared<const SampleLengths>(std::move(lengths)), seed, std::move(options)) {}
  SampleRef next(const std::vector<double>& weights);  // weights: one per source, >= 0, sum > 0
  const std::vector<int64_t>& tokens_drawn() const { return tokens_; }    // [source]
  const std::vector<int64_t>& samples_drawn() const { return samples_; }  // [source]
  int64_t epoch() const { return epoch_; }              // telechat: passes over the pool begun so far
  int64_t pools_drawn() const { return pools_drawn_; }  // telechat: pools drawn so far
  // telechat: the current epoch's pool in draw order (empty before the first next()).
  const std::vector<SampleRef>& pool() const { return pool_; }

 private:
  void start_epoch(const std::vector<double>& weights);
  int64_t counted(int32_t source, int64_t doc) const;

  MixMode mode_;
  std::shared_ptr<const SampleLengths> lengths_ptr_;
  const SampleLengths& lengths_;
  std::vector<int64_t> max_length_;  // [source], empty = no cap
  uint64_t seed_;
  std::vector<int64_t> tokens_, samples_;
  std::vector<double> target_;  // [source] proportional: tokens it should have had by now
  // proportional: [source] permutation of its docs, position in it, passes done
  std::vector<std::vector<int64_t>> perm_;
  std::vector<int64_t> cursor_, pass_;
  // telechat
  bool redraw_ = false;
  std::vector<SampleRef> drawn_;  // the pool as drawn, in source then doc order
  std::vector<SampleRef> pool_;   // drawn_ in this epoch's shuffled order
  size_t pool_pos_ = 0;
  int64_t epoch_ = 0, pools_drawn_ = 0;
};

// TeleChat's get_weight_data on kiln's random stream: for each source in data.json order and
// each of its samples in order, w < 1 keeps it when u < w; w >= 1 gives floor(w) copies and one
// more when u < frac(w), one u = uniform01(rng) per sample drawn only where w has a fraction.
// Every sample is a candidate (the row stream skips those too short to train). Returns the
// pool in that (source, doc) order.
std::vector<SampleRef> telechat_pool(const SampleLengths& lengths, const std::vector<double>& weights,
                                     std::mt19937_64& rng);
// The random stream of the telechat pool number `draw` (0 = the first) for `seed`.
std::mt19937_64 telechat_pool_rng(uint64_t seed, int64_t draw);

// A 64-bit generator seeded from (seed, a, b) by splitmix64 mixing.
std::mt19937_64 make_rng(uint64_t seed, uint64_t a, uint64_t b);
double uniform01(std::mt19937_64& rng);  // [0, 1), 53 random bits
void shuffle(std::vector<int64_t>& v, std::mt19937_64& rng);

// The weights at `step` from a schedule (linear between points, flat outside them). A source
// a point leaves out keeps its data.json weight `base`. UserError for unknown source names or
// bad weights, naming data.schedule[i].
std::vector<double> schedule_weights(const std::vector<MixPoint>& schedule,
                                     const std::vector<std::string>& names, const std::vector<double>& base,
                                     double step);
void validate_schedule(const std::vector<MixPoint>& schedule, const std::vector<std::string>& names);

}  // namespace kiln
