// Learning-rate schedules (see lr_schedule.h).
#include "trainer/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace kiln {

double lr_at(const TrainConfig& cfg, int64_t step) {
  if (cfg.warmup_steps > 0 && step < cfg.warmup_steps)
    return cfg.lr * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup_steps);
  if (cfg.schedule == LrSchedule::constant) return cfg.lr;
  const int64_t decay_steps = std::max<int64_t>(1, cfg.steps - cfg.warmup_steps - 1);
  const double progress = std::clamp(static_cast<double>(step - cfg.warmup_steps) / decay_steps, 0.0, 1.0);
  const double ratio = cfg.schedule == LrSchedule::cosine ? 0.5 * (1.0 + std::cos(M_PI * progress)) : 1.0 - progress;
  return cfg.min_lr + (cfg.lr - cfg.min_lr) * ratio;
}

}  // namespace kiln
