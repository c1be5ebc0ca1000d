// Signals a training run answers at the end of a step (issue 10), agreed by every rank:
//   SIGUSR1                    save a checkpoint and go on training (Slurm's `--signal=USR1@T`
//                              before a time limit);
//   SIGTERM, SIGINT, SIGUSR2   save a checkpoint and exit 0.
// OpenMPI's mpirun forwards SIGUSR1 and SIGUSR2 to every rank on every host at once; a SIGTERM to
// mpirun instead starts its kill sequence (SIGCONT, odls_base_sigkill_timeout seconds, SIGTERM, the
// same again, SIGKILL), which is why kiln-launch turns a SIGTERM into SIGUSR2 (see README).
#pragma once
#include <c10/core/Device.h>

namespace kiln {

class Communicator;

// Installs the handlers for its lifetime and restores the previous ones after.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  struct Request {
    bool save = false;  // a checkpoint now (SIGUSR1, or any stop signal)
    bool stop = false;  // then exit 0
    int signal = 0;     // the signal that asked (the stop signal if both came)
  };
  // Collective over `world` at the end of a step: the union of every rank's signals since the
  // last poll, so every rank saves and stops at the same step.
  Request poll(Communicator& world, const c10::Device& device);
  // A stop signal arrived on this rank since the handlers were installed (no collective).
  bool pending() const;
};

// Tests only: sleeps KILN_TEST_STEP_SLEEP_S seconds (a step of several seconds on a tiny model,
// for the signal tests); does nothing when the variable is unset.
void test_step_delay();

}  // namespace kiln
