// The dense projection and the default factory (see projection.h).
#include "models/projection.h"

#include <ATen/ATen.h>

namespace kiln {

at::Tensor shape_only(at::IntArrayRef shape) { return at::zeros({}, at::kFloat).expand(shape).detach(); }

bool is_shape_only(const at::Tensor& t) {
  return t.defined() && t.numel() > 1 && t.storage().nbytes() < static_cast<size_t>(t.numel() * t.element_size());
}

ProjectionImpl::ProjectionImpl(const ProjectionSpec& spec) : spec_(spec) {
  weight = register_parameter("weight", shape_only({spec.local_out(), spec.local_in()}));
}

at::Tensor ProjectionImpl::forward(const at::Tensor& x) { return at::linear(x, weight); }

ProjectionFactory dense_projections() {
  return [](const ProjectionSpec& spec) { return Projection(spec); };
}

}  // namespace kiln
