// Shared by the tests run under mpirun: the world communicator main() creates (MPI backend,
// 60 s timeout) and small helpers for closed-form expectations.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "parallel/communicator.h"

namespace kiln::test {

Communicator& world();

// The dtypes every collective is checked in.
inline std::vector<at::ScalarType> all_dtypes() {
  return {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kInt, at::kLong};
}

// Values as double for comparison against closed forms (every test value is an exact integer).
inline std::vector<double> values(const at::Tensor& t) {
  at::Tensor d = t.to(at::kDouble).contiguous().view({-1});
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

}  // namespace kiln::test
