// Internal to parallel/: the backend constructors behind make_world_communicator() and the
// argument checks every backend shares, so that a wrong call fails the same way on each.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace kiln {

std::unique_ptr<Communicator> make_single_communicator(const std::string& name);
// Duplicates MPI_COMM_WORLD; MPI must be initialised (launch_info().under_mpi).
std::unique_ptr<Communicator> make_mpi_world_communicator(double timeout_s);
#ifdef KILN_WITH_NCCL
// The NCCL world on `device`; the unique id travels over `bootstrap` (the MPI world, or a
// single communicator when kiln runs as one process).
std::unique_ptr<Communicator> make_nccl_world_communicator(Communicator& bootstrap, int device,
                                                           double timeout_s);
// CUDA devices visible to this process (0 when none or the driver fails).
int visible_cuda_devices();
#endif

// "kiln: timeout after 3s in all_reduce on group dp (rank 1 of 2, world rank 3)"
std::string timeout_message(const char* op, const Communicator& c, double timeout_s);

// Shape and dtype checks (KILN_CHECK: a wrong call is a programmer error).
void check_all_gather_args(const Communicator& c, const at::Tensor& shard, const at::Tensor& out);
void check_all_gather_v_args(const Communicator& c, const at::Tensor& shard, const at::Tensor& out,
                             const std::vector<int64_t>& counts);
void check_reduce_scatter_args(const Communicator& c, const at::Tensor& in, const at::Tensor& out);
void check_peer(const Communicator& c, int peer, const char* op);

}  // namespace kiln
