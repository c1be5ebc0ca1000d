// The single-process communicator: one rank, every collective an identity or a copy, so the
// trainer runs the same code with and without mpirun. Send/recv have no peer and are errors.
#include <ATen/ATen.h>

#include "parallel/communicator_backends.h"
#include "base/error.h"

namespace kiln {
namespace {

class SingleCommunicator final : public Communicator {
 public:
  explicit SingleCommunicator(std::string name) : name_(std::move(name)) {}

  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  std::string backend() const override { return "single"; }

  void all_reduce(at::Tensor&, ReduceOp) override {}
  void all_gather(const at::Tensor& shard, at::Tensor& out) override {
    check_all_gather_args(*this, shard, out);
    out.view({-1}).copy_(shard.reshape({-1}));
  }
  void all_gather_v(const at::Tensor& shard, at::Tensor& out, const std::vector<int64_t>& counts) override {
    check_all_gather_v_args(*this, shard, out, counts);
    out.view({-1}).copy_(shard.reshape({-1}));
  }
  void reduce_scatter(const at::Tensor& in, at::Tensor& out, ReduceOp) override {
    check_reduce_scatter_args(*this, in, out);
    out.view({-1}).copy_(in.reshape({-1}));
  }
  void broadcast(at::Tensor&, int root) override {
    KILN_CHECK(root == 0, "broadcast on group ", name_, ": root ", root, " in a group of 1");
  }
  void send(const at::Tensor&, int dst) override { check_peer(*this, dst, "send"); }
  void recv(at::Tensor&, int src) override { check_peer(*this, src, "recv"); }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int, const std::string& name) override {
    return std::make_unique<SingleCommunicator>(name);
  }

 private:
  std::string name_;
};

}  // namespace

std::unique_ptr<Communicator> make_single_communicator(const std::string& name) {
  return std::make_unique<SingleCommunicator>(name);
}

}  // namespace kiln
