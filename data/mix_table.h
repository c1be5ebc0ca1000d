// What the mixer will do with a mixture, before the first step: per source its samples and
// tokens, its weight, and the share of samples and tokens it gets per epoch under data.mix.
// `kiln train` logs it at start and `kiln plan` prints it, so that (say) a TeleChat data.json
// run under the default `proportional` (sources of 40 and 10 samples at weights 1:1 give 50:50)
// is seen to differ from TeleChat's pool (80:20) before anything trains.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/mixer.h"

namespace kiln {

struct Config;
struct DataConfig;

struct MixShare {
  std::string name;
  double weight = 0;
  int64_t samples = 0;  // usable samples in the store (not dropped by data.overlong)
  int64_t tokens = 0;   // their tokens as rows hold them (over-long ones split or truncated)
  // One epoch: telechat, the first pool exactly (its copies of this source's samples);
  // proportional, as many tokens as the whole mixture holds, shared by normalized weight.
  double epoch_samples = 0, epoch_tokens = 0;
  double sample_share = 0, token_share = 0;  // of the epoch's samples / tokens
  double passes = 0;                         // epoch_samples / samples: times a sample is seen
};

// lengths[source][doc] tokens; names, weights (data.json) and formats (as prepared) per source.
std::vector<MixShare> mix_shares(const SampleLengths& lengths, const std::vector<std::string>& names,
                                 const std::vector<double>& weights, const std::vector<std::string>& formats,
                                 const DataConfig& data, uint64_t seed);
// The table as text, one line per source under a header naming data.mix (no final newline).
std::string format_mix_table(const std::vector<MixShare>& shares, MixMode mix);
// `kiln plan`: the table for cfg's data.mixture (prepared into its cache if need be), or "" when
// no mixture is set.
std::string describe_mixture(const Config& cfg);

}  // namespace kiln
