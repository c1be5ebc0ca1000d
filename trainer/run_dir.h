// The run directory's safety rules (issue 10), kept out of the step loop:
//  - one trainer per run directory: an flock on RUN_DIR/kiln.lock held for the whole run (the OS
//    drops it when the process dies); the file names the holder (pid, host, start time) so a
//    second trainer can say who has it;
//  - where to resume: `latest` when it names a complete checkpoint, otherwise the newest complete
//    step-* (with a warning), never random init over existing checkpoints; `resume: never` in a
//    directory with checkpoints and `resume: DIR` older than checkpoints already there are refused;
//  - the environment (run_dir a file, unwritable, no space for one checkpoint) is checked once, at
//    start, on the rank that writes (world rank 0), and its verdict shared with every rank, so all
//    of them exit 2 together instead of one failing mid-run while the others wait.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/config.h"

namespace kiln {

class Communicator;

// flock(LOCK_EX | LOCK_NB) on RUN_DIR/kiln.lock; UserError naming the holder when another process
// has it. Released by the destructor, or by the OS when the process dies.
class RunDirLock {
 public:
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  static std::string lock_path(const std::string& run_dir);

 private:
  int fd_ = -1;
};

// "step-00000012" -> 12; -1 for any other name (step-12.tmp, latest, ...).
int64_t checkpoint_step_of(const std::string& name);
// A checkpoint directory whose save finished (state.json is written last).
bool is_complete_checkpoint(const std::string& dir);
// The complete step-* directories under RUN_DIR/checkpoints, ascending by step number.
std::vector<std::pair<int64_t, std::string>> complete_checkpoints(const std::string& run_dir);

// train.resume: auto -> the directory `latest` names if complete, else the newest complete step-*
// (a warning on rank 0 says so), else "". never -> "" (UserError when checkpoints exist).
// DIR -> DIR (UserError when it is not complete, or run_dir holds newer checkpoints that this run
// would interleave with).
std::string resolve_resume(const TrainConfig& train);

// train.resume: auto's rule on its own (also what eval, generate and export read from a run dir).
std::string auto_resume_checkpoint(const std::string& run_dir);

// Deletes all but the keep_last highest-numbered complete checkpoints under `root`
// (RUN_DIR/checkpoints), by step number, not by name.
void prune_checkpoints(const std::string& root, int64_t keep_last);

// run_dir (and run_dir/checkpoints) can be made, are directories, accept a file, and the file
// system has at least need_bytes free. UserError naming the path otherwise.
void check_run_dir_environment(const std::string& run_dir, int64_t need_bytes);
// Bytes one checkpoint of this config takes: fp32 weights + master + two AdamW moments.
int64_t checkpoint_bytes(const Config& cfg);

// What train() holds for the whole run: the lock (world rank 0 only) and the resume point.
struct RunDir {
  std::unique_ptr<RunDirLock> lock;
  std::string resume_dir;  // "" = start fresh
};

// Collective over `world`. On world rank 0: lock, environment check, resume point, resume
// compatibility (resume_policy.h). The verdict (the resume point, or the first error's message)
// goes to every rank; on an error every rank throws UserError, so the whole job exits 2 at once.
RunDir open_run_dir(const Config& cfg, Communicator& world, const c10::Device& device);

// Shares world rank 0's verdict: rank 0 passes (ok, text); every rank returns rank 0's pair.
// Collective; `text` up to 4095 bytes.
std::pair<bool, std::string> share_verdict(Communicator& world, const c10::Device& device, bool ok,
                                           const std::string& text);

}  // namespace kiln
