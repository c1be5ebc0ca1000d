// Communicator: the narrow interface training needs from a process group (STYLE.md 2).
// The trainer never sees MPI or NCCL types. Backends: MPI (CPU tensors; CUDA tensors staged
// through pinned host memory unless the MPI is CUDA-aware), NCCL (CUDA tensors, stream-ordered,
// unique id broadcast over MPI) and a single-process one (size 1, every collective an identity).
//
// Every collective is bounded by the timeout given at creation: a peer that died or hangs makes
// the call fail with a message naming the collective, the group and the rank, and the process
// exit non-zero — never hang forever.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/config.h"

namespace kiln {

enum class ReduceOp { Sum, Max, Min };

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "world", "dp", "tp", "pp" — for messages
  virtual std::string backend() const = 0;      // "mpi", "nccl", "single"

  // In place on every rank.
  virtual void all_reduce(at::Tensor& t, ReduceOp op = ReduceOp::Sum) = 0;
  // out (size * shard.numel(), contiguous) = concatenation of every rank's shard, rank order.
  virtual void all_gather(const at::Tensor& shard, at::Tensor& out) = 0;
  // Uneven sizes: counts[r] = elements of rank r; out holds sum(counts).
  virtual void all_gather_v(const at::Tensor& shard, at::Tensor& out, const std::vector<int64_t>& counts) = 0;
  // out (in.numel() / size) = this rank's slice of the elementwise sum of every rank's `in`.
  virtual void reduce_scatter(const at::Tensor& in, at::Tensor& out, ReduceOp op = ReduceOp::Sum) = 0;
  virtual void broadcast(at::Tensor& t, int root) = 0;
  virtual void send(const at::Tensor& t, int dst) = 0;
  virtual void recv(at::Tensor& t, int src) = 0;
  virtual void barrier() = 0;

  // Ranks with the same color form a new group, ordered by key. Collective over this group.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;
};

// all_reduce of a small host tensor (counts, a loss, a flag) on a group whose backend may only
// take device tensors (NCCL): staged through `device` when that is not the CPU.
void all_reduce_host(Communicator& comm, at::Tensor& t, const c10::Device& device,
                     ReduceOp op = ReduceOp::Sum);

struct LaunchInfo {
  int world_rank = 0;
  int world_size = 1;
  int local_rank = 0;  // rank among the processes on this host
  int local_size = 1;
  std::string host;
  bool under_mpi = false;  // started by mpirun (OMPI_/PMI_ environment) rather than directly
};

// How the environment says this process was launched: mpirun (OMPI_COMM_WORLD_*), srun
// (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID) or another PMI launcher; launcher "" when
// none (one process). Fields unknown from the environment are -1. `get` reads a variable.
struct LaunchEnv {
  std::string launcher;
  int rank = -1, size = -1, local_rank = -1, local_size = -1;
};
LaunchEnv launch_env(const std::function<const char*(const char*)>& get = [](const char* v) {
  return std::getenv(v);
});

// One rank of several ending the whole job now with exit status `code` (MPI_Abort), so the other
// ranks never wait out a collective timeout on it; returns when this is not a multi-rank job.
void abort_job(int code);

// Initialises MPI when started under mpirun (RAII: finalised at exit), fills LaunchInfo, and
// sets the log rank. Safe to call more than once.
const LaunchInfo& launch_info();

// The process layout as one line, e.g. "4 processes on 2 hosts: a [0-1], b [2-3] (mpirun)".
// Collective under mpirun (every rank calls it); the trainer prints it once with log0.
std::string launch_layout();

// The world group. backend: automatic (NCCL when CUDA tensors are used and NCCL is built, MPI
// under mpirun, else single), nccl, mpi. timeout_s bounds every collective.
std::unique_ptr<Communicator> make_world_communicator(Backend backend, bool cuda, double timeout_s);
// The same from the spelling ("auto", "nccl", "mpi"); anything else is a UserError.
std::unique_ptr<Communicator> make_world_communicator(const std::string& backend, bool cuda,
                                                      double timeout_s);

}  // namespace kiln
