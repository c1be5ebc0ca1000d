// Learning rate at a step: linear warmup from 0 to lr over warmup_steps, then cosine, linear or
// constant decay to min_lr at the last step (Megatron's and HF's shapes).
#pragma once
#include <cstdint>

#include "trainer/config.h"

namespace kiln {

// step counts from 0 (the first optimizer step uses lr_at(cfg, 0)).
double lr_at(const TrainConfig& cfg, int64_t step);

}  // namespace kiln
