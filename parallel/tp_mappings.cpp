// The tensor/sequence-parallel mappings (see tp_mappings.h). The collectives work on flat
// contiguous buffers in rank order; a split along dimension d is moved to the front first, so
// rank r's slice is the r-th contiguous block.
#include "parallel/tp_mappings.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "base/error.h"
#include "parallel/communicator.h"

namespace kiln {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

Communicator* comm_of(AutogradContext* ctx) {
  return reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
}
void keep_comm(AutogradContext* ctx, Communicator& tp) {
  ctx->saved_data["comm"] = reinterpret_cast<int64_t>(&tp);
}

// ---- the collectives on whole tensors, no autograd --------------------------------------------

at::Tensor all_reduce_sum(const at::Tensor& x, Communicator& tp) {
  at::Tensor out = x.contiguous().clone();
  tp.all_reduce(out);
  return out;
}

// This rank's slice of x along dim.
at::Tensor slice_of(const at::Tensor& x, int64_t dim, Communicator& tp) {
  const int64_t n = x.size(dim);
  KILN_CHECK(n % tp.size() == 0, "tp split: dimension ", dim, " of size ", n, " is not divisible by ",
             tp.size());
  return x.narrow(dim, tp.rank() * (n / tp.size()), n / tp.size()).contiguous();
}

// The ranks' x concatenated along dim.
at::Tensor all_gather_dim(const at::Tensor& x, int64_t dim, Communicator& tp) {
  at::Tensor front = x.movedim(dim, 0).contiguous();  // (n, ...)
  std::vector<int64_t> shape = front.sizes().vec();
  at::Tensor out = at::empty({tp.size() * front.numel()}, front.options());
  tp.all_gather(front, out);
  shape[0] *= tp.size();
  return out.view(shape).movedim(0, dim).contiguous();
}

// This rank's slice along dim of the sum over ranks of x.
at::Tensor reduce_scatter_dim(const at::Tensor& x, int64_t dim, Communicator& tp) {
  const int64_t n = x.size(dim);
  KILN_CHECK(n % tp.size() == 0, "tp reduce-scatter: dimension ", dim, " of size ", n,
             " is not divisible by ", tp.size());
  at::Tensor front = x.movedim(dim, 0).contiguous();
  std::vector<int64_t> shape = front.sizes().vec();
  shape[0] /= tp.size();
  at::Tensor out = at::empty({front.numel() / tp.size()}, front.options());
  tp.reduce_scatter(front.view({-1}), out);
  return out.view(shape).movedim(0, dim).contiguous();
}

// ---- the autograd pairs ------------------------------------------------------------------------

struct CopyToRegion : Function<CopyToRegion> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Communicator& tp) {
    keep_comm(ctx, tp);
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {all_reduce_sum(g[0], *comm_of(ctx)), at::Tensor()};
  }
};

struct ReduceFromRegion : Function<ReduceFromRegion> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& x, Communicator& tp) {
    return all_reduce_sum(x, tp);
  }
  static variable_list backward(AutogradContext*, variable_list g) { return {g[0], at::Tensor()}; }
};

// Split (forward slice, backward all-gather) along dim.
struct Scatter : Function<Scatter> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t dim, Communicator& tp) {
    keep_comm(ctx, tp);
    ctx->saved_data["dim"] = dim;
    return slice_of(x, dim, tp);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {all_gather_dim(g[0], ctx->saved_data["dim"].toInt(), *comm_of(ctx)), at::Tensor(), at::Tensor()};
  }
};

// Gather along dim; backward: the slice (reduce = false: last dim, the ranks' gradients of the
// gathered output are identical) or the reduce-scatter (reduce = true: sequence parallel, each
// rank's region produced a partial gradient of the whole sequence).
struct Gather : Function<Gather> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t dim, bool reduce,
                            Communicator& tp) {
    keep_comm(ctx, tp);
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["reduce"] = reduce;
    return all_gather_dim(x, dim, tp);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const int64_t dim = ctx->saved_data["dim"].toInt();
    Communicator& tp = *comm_of(ctx);
    at::Tensor gx =
        ctx->saved_data["reduce"].toBool() ? reduce_scatter_dim(g[0], dim, tp) : slice_of(g[0], dim, tp);
    return {gx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct ReduceScatter : Function<ReduceScatter> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t dim, Communicator& tp) {
    keep_comm(ctx, tp);
    ctx->saved_data["dim"] = dim;
    return reduce_scatter_dim(x, dim, tp);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {all_gather_dim(g[0], ctx->saved_data["dim"].toInt(), *comm_of(ctx)), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor copy_to_region(const at::Tensor& x, Communicator& tp) {
  return tp.size() == 1 ? x : CopyToRegion::apply(x, tp);
}
at::Tensor reduce_from_region(const at::Tensor& x, Communicator& tp) {
  return tp.size() == 1 ? x : ReduceFromRegion::apply(x, tp);
}
at::Tensor scatter_last_dim(const at::Tensor& x, Communicator& tp) {
  return tp.size() == 1 ? x : Scatter::apply(x, x.dim() - 1, tp);
}
at::Tensor gather_last_dim(const at::Tensor& x, Communicator& tp) {
  return tp.size() == 1 ? x : Gather::apply(x, x.dim() - 1, false, tp);
}
at::Tensor scatter_seq(const at::Tensor& x, Communicator& tp) {
  return tp.size() == 1 ? x : Scatter::apply(x, int64_t{1}, tp);
}
at::Tensor gather_seq(const at::Tensor& x, Communicator& tp) {
  return tp.size() == 1 ? x : Gather::apply(x, int64_t{1}, true, tp);
}
at::Tensor reduce_scatter_seq(const at::Tensor& x, Communicator& tp) {
  return tp.size() == 1 ? x : ReduceScatter::apply(x, int64_t{1}, tp);
}

}  // namespace kiln
