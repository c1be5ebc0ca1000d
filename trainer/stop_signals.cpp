// Stop and save signals, agreed across ranks at step boundaries (see stop_signals.h).
#include "trainer/stop_signals.h"

#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

#include "parallel/communicator.h"

namespace kiln {
namespace {

std::atomic<int> g_stop{0};  // the last stop signal, 0 = none
std::atomic<int> g_save{0};  // SIGUSR1 seen since the last poll
void on_stop(int sig) { g_stop = sig; }
void on_save(int) { g_save = 1; }

struct sigaction g_old[4];
constexpr int kSignals[4] = {SIGTERM, SIGINT, SIGUSR2, SIGUSR1};

}  // namespace

StopSignals::StopSignals() {
  g_stop = 0;
  g_save = 0;
  for (int i = 0; i < 4; ++i) {
    struct sigaction sa {};
    sa.sa_handler = kSignals[i] == SIGUSR1 ? on_save : on_stop;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // a signal mid-write must not fail the write
    sigaction(kSignals[i], &sa, &g_old[i]);
  }
}

StopSignals::~StopSignals() {
  for (int i = 0; i < 4; ++i) sigaction(kSignals[i], &g_old[i], nullptr);
}

bool StopSignals::pending() const { return g_stop.load() != 0; }

StopSignals::Request StopSignals::poll(Communicator& world, const c10::Device& device) {
  at::Tensor flags = at::zeros({2}, at::kDouble);
  flags[0] = static_cast<double>(g_stop.load());
  flags[1] = static_cast<double>(g_save.exchange(0));
  all_reduce_host(world, flags, device, ReduceOp::Max);
  Request r;
  const int stop = static_cast<int>(flags[0].item<double>());
  r.stop = stop != 0;
  r.save = r.stop || flags[1].item<double>() > 0;
  r.signal = r.stop ? stop : (r.save ? SIGUSR1 : 0);
  return r;
}

void test_step_delay() {
  static const double seconds = [] {
    const char* v = std::getenv("KILN_TEST_STEP_SLEEP_S");
    return v ? std::atof(v) : 0.0;
  }();
  if (seconds > 0) std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

}  // namespace kiln
