// Learning-rate schedules against their closed forms, written out by hand: linear warmup to lr,
// then cosine, linear or constant to min_lr, which the last step reaches exactly.
#include <gtest/gtest.h>

#include <cmath>

#include "trainer/config.h"
#include "trainer/lr_schedule.h"

namespace kiln {
namespace {

TrainConfig schedule(const std::string& kind, int64_t steps, int64_t warmup) {
  TrainConfig t;
  t.lr = 1.0;
  t.min_lr = 0.1;
  t.steps = steps;
  t.warmup_steps = warmup;
  EXPECT_TRUE(parse_choice(kind, &t.schedule)) << kind;
  return t;
}

// warmup 2, steps 7: steps 0, 1 warm up (0.5, 1.0); the decay runs over steps 2..6, progress
// 0, 1/4, 1/2, 3/4, 1.
TEST(LrSchedule, CosineClosedForm) {
  const TrainConfig t = schedule("cosine", 7, 2);
  const double c = 0.5 * (1 + std::cos(M_PI / 4));  // 0.853553...
  const double want[] = {0.5, 1.0, 1.0, 0.1 + 0.9 * c, 0.55, 0.1 + 0.9 * (1 - c), 0.1};
  for (int s = 0; s < 7; ++s) EXPECT_NEAR(lr_at(t, s), want[s], 1e-12) << "step " << s;
  EXPECT_NEAR(lr_at(t, 3), 0.868198051533946, 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(t, 6), 0.1);  // min_lr at the last step, exactly
  EXPECT_DOUBLE_EQ(lr_at(t, 9), 0.1);  // and after it
}

TEST(LrSchedule, LinearClosedForm) {
  const TrainConfig t = schedule("linear", 7, 2);
  const double want[] = {0.5, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1};
  for (int s = 0; s < 7; ++s) EXPECT_NEAR(lr_at(t, s), want[s], 1e-12) << "step " << s;
  EXPECT_DOUBLE_EQ(lr_at(t, 20), 0.1);
}

TEST(LrSchedule, ConstantAfterWarmupIgnoresMinLr) {
  const TrainConfig t = schedule("constant", 7, 4);
  const double want[] = {0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0};
  for (int s = 0; s < 7; ++s) EXPECT_NEAR(lr_at(t, s), want[s], 1e-12) << "step " << s;
}

TEST(LrSchedule, NoWarmupStartsAtPeakAndBoundaries) {
  TrainConfig t = schedule("cosine", 5, 0);
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 1.0);  // the first step at the peak
  EXPECT_NEAR(lr_at(t, 2), 0.55, 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(t, 4), 0.1);
  // min_lr == lr: flat.
  t.min_lr = 1.0;
  for (int s = 0; s < 5; ++s) EXPECT_DOUBLE_EQ(lr_at(t, s), 1.0);
  // one decay step after the warmup: the peak, then straight to min_lr.
  t = schedule("linear", 5, 3);
  const double want[] = {1.0 / 3, 2.0 / 3, 1.0, 1.0, 0.1};
  for (int s = 0; s < 5; ++s) EXPECT_NEAR(lr_at(t, s), want[s], 1e-12) << "step " << s;
  // one step in all: the peak (no decay step to reach min_lr in).
  t = schedule("cosine", 1, 0);
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 1.0);
}

}  // namespace
}  // namespace kiln
