// Which parameters a run trains (train.trainable, train.trainable_new_rows_only), as the
// two-stage vocabulary-extension recipes do: stage 1 trains only the embedding and head (or
// only their new rows), stage 2 resumes from stage 1's checkpoint with everything trainable.
//
// Frozen parameters do not require grad, so the ZeroOptimizer (parallel/zero.h takes only
// parameters that require grad) holds no state for them, reduces no gradient for them and never
// writes them; checkpoints store them as "weight/NAME" (trainer/checkpoint.h). New-rows-only keeps
// the embedding and head in the optimizer with their old rows held fixed
// (AdamWOptions::frozen_leading: no gradient, no weight decay).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace kiln {

class LlamaImpl;
class WeightSource;

struct TrainableSet {
  std::vector<std::string> trained, frozen;       // parameter names, model order
  std::map<std::string, int64_t> frozen_leading;  // name -> leading elements held fixed
  int64_t trained_elements = 0, total_elements = 0;
};

// A pattern with *, ? or [ matches whole names as a glob; any other pattern matches names that
// contain it ("embed_tokens" matches model.embed_tokens.weight).
bool trainable_pattern_matches(const std::string& pattern, const std::string& name);

// Sets requires_grad on every parameter of `model` (placeholders included) as cfg.train says.
// UserError naming train.trainable for a pattern that matches no parameter;
// train.trainable_new_rows_only without more rows than model.init_from's is a UserError too.
TrainableSet apply_trainable(LlamaImpl& model, const Config& cfg);

// The optimizer state to resume from when the trainable set grew: `state` serves "master/NAME",
// "exp_avg/NAME" and "exp_avg_sq/NAME" for the names in `trained_before`; for any other NAME,
// master is `weights`' value of NAME and the moments are zeros (what a newly trained parameter
// starts with; the step count, schedule and data position carry on).
std::unique_ptr<WeightSource> widened_state_source(std::unique_ptr<WeightSource> state,
                                                   std::set<std::string> trained_before,
                                                   std::unique_ptr<WeightSource> weights);
// The same for checkpoint `dir` (its "trained" list, state and weights).
std::unique_ptr<WeightSource> resume_state_source(const std::string& dir);

}  // namespace kiln
