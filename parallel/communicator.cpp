// make_world_communicator(): picks the backend (and logs why when it falls back), plus the
// argument checks shared by every backend.
#include <ATen/ATen.h>

#include <numeric>

#include "parallel/communicator_backends.h"
#include "base/error.h"
#include "base/log.h"

namespace kiln {

std::string timeout_message(const char* op, const Communicator& c, double timeout_s) {
  return str("kiln: timeout after ", timeout_s, "s in ", op, " on group ", c.name(), " (rank ", c.rank(),
             " of ", c.size(), ", world rank ", launch_info().world_rank, ")");
}

void check_all_gather_args(const Communicator& c, const at::Tensor& shard, const at::Tensor& out) {
  KILN_CHECK(out.is_contiguous(), "all_gather on group ", c.name(), ": out must be contiguous");
  KILN_CHECK(out.scalar_type() == shard.scalar_type(), "all_gather on group ", c.name(), ": dtype of out (",
             out.scalar_type(), ") differs from shard (", shard.scalar_type(), ")");
  KILN_CHECK(out.numel() == shard.numel() * c.size(), "all_gather on group ", c.name(), ": out has ",
             out.numel(), " elements, expected ", c.size(), " x ", shard.numel());
}

void check_all_gather_v_args(const Communicator& c, const at::Tensor& shard, const at::Tensor& out,
                             const std::vector<int64_t>& counts) {
  KILN_CHECK(out.is_contiguous(), "all_gather_v on group ", c.name(), ": out must be contiguous");
  KILN_CHECK(out.scalar_type() == shard.scalar_type(), "all_gather_v on group ", c.name(),
             ": dtype of out differs from shard");
  KILN_CHECK(static_cast<int>(counts.size()) == c.size(), "all_gather_v on group ", c.name(), ": ",
             counts.size(), " counts for ", c.size(), " ranks");
  KILN_CHECK(shard.numel() == counts[c.rank()], "all_gather_v on group ", c.name(), ": shard has ",
             shard.numel(), " elements but counts[", c.rank(), "] = ", counts[c.rank()]);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  KILN_CHECK(out.numel() == total, "all_gather_v on group ", c.name(), ": out has ", out.numel(),
             " elements, counts sum to ", total);
}

void check_reduce_scatter_args(const Communicator& c, const at::Tensor& in, const at::Tensor& out) {
  KILN_CHECK(in.numel() % c.size() == 0, "reduce_scatter on group ", c.name(), ": ", in.numel(),
             " elements do not split evenly over ", c.size(), " ranks (pad the buffer)");
  KILN_CHECK(out.numel() == in.numel() / c.size(), "reduce_scatter on group ", c.name(), ": out has ",
             out.numel(), " elements, expected ", in.numel() / c.size());
  KILN_CHECK(out.scalar_type() == in.scalar_type(), "reduce_scatter on group ", c.name(),
             ": dtype of out differs from in");
}

void check_peer(const Communicator& c, int peer, const char* op) {
  KILN_CHECK(peer >= 0 && peer < c.size() && peer != c.rank(), op, " on group ", c.name(), ": peer ", peer,
             " is not another rank of 0..", c.size() - 1, " (this is rank ", c.rank(), ")");
}

std::unique_ptr<Communicator> make_world_communicator(const std::string& backend, bool cuda,
                                                      double timeout_s) {
  Backend b;
  if (!parse_choice(backend, &b)) user_error("parallel.backend: '", backend, "' is not one of auto | nccl | mpi");
  return make_world_communicator(b, cuda, timeout_s);
}

std::unique_ptr<Communicator> make_world_communicator(Backend backend, bool cuda, double timeout_s) {
  if (!(timeout_s > 0))
    user_error("parallel.timeout_s: ", timeout_s, " must be a positive number of seconds");
  const LaunchInfo& launch = launch_info();

#ifdef KILN_WITH_NCCL
  constexpr bool kHaveNccl = true;
#else
  constexpr bool kHaveNccl = false;
#endif
  if (backend == Backend::nccl && !kHaveNccl)
    user_error("parallel.backend: nccl, but this kiln was built without NCCL; use auto or mpi");
  if (backend == Backend::nccl && !cuda)
    user_error("parallel.backend: nccl needs CUDA tensors (a GPU run); use auto or mpi on the CPU");

  bool use_nccl = backend == Backend::nccl || (backend == Backend::automatic && cuda && kHaveNccl);
  if (backend == Backend::automatic && cuda && !kHaveNccl)
    log0("parallel.backend auto: built without NCCL, CUDA tensors go through MPI host staging");
#ifdef KILN_WITH_NCCL
  // NCCL needs a GPU of its own per rank; ranks sharing GPUs talk through MPI host staging.
  const int gpus = use_nccl ? visible_cuda_devices() : 0;
  if (use_nccl && gpus > 0 && launch.local_size > gpus) {
    if (backend == Backend::nccl)
      user_error("parallel.backend: nccl needs one GPU per rank, but ", launch.local_size, " ranks on ",
                 launch.host, " share ", gpus, " GPU(s); use mpi (host staging) or at most ", gpus,
                 " ranks per host");
    log0("parallel.backend auto: ", launch.local_size, " ranks share ", gpus,
         " GPU(s) on a host, using MPI with host staging (NCCL needs one GPU per rank)");
    use_nccl = false;
  }
#endif
  if (use_nccl) {
#ifdef KILN_WITH_NCCL
    std::unique_ptr<Communicator> bootstrap =
        launch.under_mpi ? make_mpi_world_communicator(timeout_s) : make_single_communicator("world");
    return make_nccl_world_communicator(*bootstrap, launch.local_rank, timeout_s);
#endif
  }
  if (launch.under_mpi) return make_mpi_world_communicator(timeout_s);
  if (backend == Backend::mpi) log0("parallel.backend mpi: not started by mpirun, running as one process");
  return make_single_communicator("world");
}

void all_reduce_host(Communicator& comm, at::Tensor& t, const c10::Device& device, ReduceOp op) {
  if (device.is_cpu()) return comm.all_reduce(t, op);
  at::Tensor d = t.to(device);
  comm.all_reduce(d, op);
  t.copy_(d);
}

}  // namespace kiln
