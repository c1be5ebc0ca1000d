// Mixer: which sample comes next, from several weighted sources.
//   telechat      TeleChat's pool, rebuilt every epoch: a source of weight w < 1 keeps each
//                 sample with probability w; w >= 1 gives floor(w) copies plus one more with
//                 probability frac(w); the pool is then shuffled (seeded).
//   proportional  each source's share of drawn tokens tracks its normalized weight: the source
//                 furthest behind its target goes next (target_i grows by p_i * L for every
//                 sample of L tokens drawn, p the normalized weights then in force; with fixed
//                 weights that is p_i * T after T tokens), as Megatron's blended datasets do
//                 with sample counts. Inside a source,
//                 samples come in a seeded permutation, reshuffled every pass.
// Weights may change between calls (data.schedule); a telechat pool picks them up at the
// next epoch. Randomness is our own (splitmix64 / mt19937_64 bits), portable across platforms.
#pragma once
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace kiln {

struct MixPoint;

struct SampleRef {
  int32_t source = 0;
  int64_t doc = 0;
};

using SampleLengths = std::vector<std::vector<int64_t>>;  // [source][doc] tokens

class Mixer {
 public:
  // lengths: tokens of each sample (proportional counts tokens, each at most max_length);
  // shared, not copied (a large mixture has many millions of samples).
  Mixer(const std::string& mode, std::shared_ptr<const SampleLengths> lengths, uint64_t seed,
        int64_t max_length = std::numeric_limits<int64_t>::max());
  Mixer(const std::string& mode, SampleLengths lengths, uint64_t seed)
      : Mixer(mode, std::make_shared<const SampleLengths>(std::move(lengths)), seed) {}
  SampleRef next(const std::vector<double>& weights);  // weights: one per source, >= 0, sum > 0
  const std::vector<int64_t>& tokens_drawn() const { return tokens_; }    // [source]
  const std::vector<int64_t>& samples_drawn() const { return samples_; }  // [source]
  int64_t epoch() const { return epoch_; }                                // telechat pools built so far

 private:
  void build_pool(const std::vector<double>& weights);

  std::string mode_;
  std::shared_ptr<const SampleLengths> lengths_ptr_;
  const SampleLengths& lengths_;
  int64_t max_length_;
  uint64_t seed_;
  std::vector<int64_t> tokens_, samples_;
  std::vector<double> target_;  // [source] proportional: tokens it should have had by now
  // proportional: [source] permutation of its docs, position in it, passes done
  std::vector<std::vector<int64_t>> perm_;
  std::vector<int64_t> cursor_, pass_;
  // telechat
  std::vector<SampleRef> pool_;
  size_t pool_pos_ = 0;
  int64_t epoch_ = 0;
};

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
