// Test-only hooks of the training loop (see test_hooks.h).
#include "trainer/test_hooks.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "base/log.h"

namespace kiln {

void test_pause_after_step(int64_t step, const std::function<bool()>& stop_requested) {
  const char* env = std::getenv("KILN_TEST_PAUSE_AFTER_STEP");
  if (env == nullptr || std::to_string(step) != env) return;
  std::fprintf(stderr, "%skiln: test pause after step %lld\n", rank_prefix().c_str(),
               static_cast<long long>(step));
  std::fflush(stderr);
  while (!stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

}  // namespace kiln
