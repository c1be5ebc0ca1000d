// Test-only hooks of the training loop (see test_hooks.h).
#include "trainer/test_hooks.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
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

void test_fault_point(const char* point, int64_t step) {
  const char* env = std::getenv("KILN_TEST_FAULT");
  if (env == nullptr) return;
  const std::string want = env, at = std::string(":") + point + ":" + std::to_string(step);
  if (want.size() <= at.size() || want.compare(want.size() - at.size(), at.size(), at) != 0) return;
  const std::string action = want.substr(0, want.size() - at.size());
  std::fprintf(stderr, "%skiln: test fault (%s) at %s\n", rank_prefix().c_str(), action.c_str(),
               at.c_str() + 1);
  std::fflush(stderr);
  if (action == "kill") std::raise(SIGKILL);
  throw std::runtime_error("test fault at " + at.substr(1));
}

}  // namespace kiln
