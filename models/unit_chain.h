// The model as a chain of units (embedding, one per decoder layer, final norm + head), the way
// the parallel runtime sees it: ZeRO-3 shards and gathers per unit, activation checkpointing
// recomputes per unit, a pipeline stage is a contiguous run of units. parallel/ knows this
// interface, not the Llama classes behind it.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

using UnitFn = std::function<at::Tensor(const at::Tensor&)>;
// (unit index, input, the unit's own forward) -> output. The default runs fn(input).
using UnitRunner = std::function<at::Tensor(int64_t unit, const at::Tensor& input, const UnitFn& fn)>;

class UnitChain {
 public:
  virtual ~UnitChain() = default;
  virtual int64_t num_units() const = 0;
  // The parameters unit `unit` owns, with global names. A tensor listed by several units (a tied
  // head on a stage without the embedding) belongs to the first.
  virtual std::vector<std::pair<std::string, at::Tensor>> unit_parameters(int64_t unit) const = 0;
  // Other units whose parameters `unit` reads too (a tied head reads the embedding: {0}).
  virtual std::vector<int64_t> unit_reads(int64_t unit) const = 0;
  // Every parameter of the chain in model order, with global names.
  virtual std::vector<std::pair<std::string, at::Tensor>> chain_parameters() const = 0;
  virtual void set_unit_runner(UnitRunner runner) = 0;
};

}  // namespace kiln
