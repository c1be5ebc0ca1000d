// What may change between a checkpoint and the config that resumes it (issue 10).
//  - unusable: the model's shape (vocab, hidden size, layers, heads, kv heads, ffn size, tied
//    embeddings, architecture, position encoding): exit 2 naming the key, the checkpoint's value
//    and the config's;
//  - allowed, one warning line per key saying what changes: data.seq_len (context extension),
//    the global batch, the lr schedule (lr, min_lr, warmup, schedule, steps), the data mixture
//    (mixture, mix, schedule), model.max_seq_len and RoPE scaling;
//  - train.seed: a warning that the data order follows the checkpoint (its saved loader seed);
//  - anything else (layout, ZeRO stage, logging, precision) resumes without a word.
// The checkpoint's side is the resolved config stored in it (DIR/config.yaml).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace kiln {

struct ResumeFinding {
  std::string key;
  bool fatal = false;
  std::string line;  // the whole message: key, checkpoint's value, config's value, what it means
};

// ckpt / now: the checkpoint's and the current config; *_dp: their data-parallel sizes (for the
// effective global batch when global_batch_size is 0); step: the checkpoint's step.
std::vector<ResumeFinding> compare_for_resume(const Config& ckpt, int64_t ckpt_dp, const Config& now,
                                              int64_t now_dp, int64_t step);

// Reads DIR/config.yaml and DIR/state.json, logs every warning (rank 0) and throws UserError on the
// first unusable change. A checkpoint without config.yaml is compared on nothing.
void check_resume_compatibility(const std::string& ckpt_dir, const Config& cfg, int64_t world_size);

}  // namespace kiln
