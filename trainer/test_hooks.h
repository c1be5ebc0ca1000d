// Test-only hooks of the training loop, driven by environment variables that no user sets.
// They let the end-to-end tests stop a run at an exact point instead of racing a timer.
//
//   KILN_TEST_PAUSE_AFTER_STEP=N   after step N's metrics row is written (and before its
//                                  checkpoint), every rank prints "kiln: test pause after step N"
//                                  to stderr and waits until a stop signal (SIGTERM/SIGINT)
//                                  arrives, then goes on: a SIGKILL there lands at a known
//                                  step, a SIGTERM there must save step N and exit.
//   KILN_TEST_FAULT=ACTION:POINT:N  at POINT of the checkpoint save of step N, ACTION "kill"
//                                  raises SIGKILL, "throw" throws (unit tests). Points, in the
//                                  order of a save: "shards" (this rank's shard written),
//                                  "state" (rank 0: state.json written, not yet renamed),
//                                  "renamed" (rank 0: step-N complete, `latest` not yet updated).
#pragma once
#include <cstdint>
#include <functional>

namespace kiln {

// Waits as described above when KILN_TEST_PAUSE_AFTER_STEP equals `step`; `stop_requested`
// tells when a signal has arrived. Returns at once otherwise (one getenv per call).
void test_pause_after_step(int64_t step, const std::function<bool()>& stop_requested);

// A save interrupted at `point` as described above when KILN_TEST_FAULT names it and `step`.
void test_fault_point(const char* point, int64_t step);

}  // namespace kiln
