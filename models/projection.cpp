// The dense projection and the default factory (see projection.h).
#include "models/projection.h"

#include <ATen/ATen.h>

#include "base/error.h"
#include "models/ops/cpu_gemm.h"

namespace kiln {

at::Tensor shape_only(at::IntArrayRef shape) { return at::zeros({}, at::kFloat).expand(shape).detach(); }

bool is_shape_only(const at::Tensor& t) {
  return t.defined() && t.numel() > 1 &&
         t.storage().nbytes() < static_cast<size_t>(t.numel() * t.element_size());
}

ProjectionImpl::ProjectionImpl(const ProjectionSpec& spec) : spec_(spec) {
  weight = register_parameter("weight", shape_only({spec.local_out(), spec.local_in()}));
}

at::Tensor ProjectionImpl::forward(const at::Tensor& x) { return leave(local(enter(x))); }

at::Tensor ProjectionImpl::local(const at::Tensor& x) { return dense_linear(x, local_weight()); }

ProjectionImpl::GlobalShape ProjectionImpl::global_shape(const std::string& param) const {
  KILN_CHECK(param == "weight", spec_.name, ": no parameter '", param, "'");
  const bool split = spec_.shard != ShardDim::None && spec_.shard_len > 0;
  return {{spec_.out, spec_.in}, split ? (spec_.shard == ShardDim::Out ? 0 : 1) : -1};
}

ProjectionFactory dense_projections() {
  return [](const ProjectionSpec& spec) { return Projection(spec); };
}

}  // namespace kiln
