// Finite-state checks around checkpoints (see state_check.h).
#include "trainer/state_check.h"

#include <ATen/ATen.h>

#include "base/error.h"
#include "models/safetensors.h"
#include "parallel/communicator.h"

namespace kiln {
namespace {
bool finite(const at::Tensor& t) {
  return !t.defined() || t.numel() == 0 || at::isfinite(t).all().item<bool>();
}
}  // namespace

std::string first_non_finite(const std::vector<TensorSlice>& slices,
                             const std::vector<std::pair<std::string, at::Tensor>>& weights) {
  for (const auto& s : slices)
    if (!finite(s.data)) return s.name;
  for (const auto& [name, t] : weights)
    if (!finite(t)) return name;
  return "";
}

void require_finite_state(Communicator& world, const c10::Device& device,
                          const std::vector<TensorSlice>& slices,
                          const std::vector<std::pair<std::string, at::Tensor>>& weights,
                          const std::string& what) {
  const std::string bad = first_non_finite(slices, weights);
  at::Tensor flag = at::full({1}, bad.empty() ? 0.0 : 1.0, at::kDouble);
  all_reduce_host(world, flag, device, ReduceOp::Max);
  if (flag.item<double>() == 0) return;
  const std::string hint =
      "the training state diverged; the last saved checkpoint is untouched: resume from it with a lower "
      "train.lr, "
      "or train.resume: DIR for an earlier one";
  if (!bad.empty()) user_error(what, ": '", bad, "' holds NaN or infinite values; ", hint);
  user_error(what, ": another rank's optimizer state holds NaN or infinite values; ", hint);
}

void require_finite_checkpoint(const std::string& dir, const std::vector<TensorSlice>& slices) {
  const std::string bad = first_non_finite(slices);
  if (!bad.empty())
    user_error(dir, ": tensor '", bad,
               "' holds NaN or infinite values; refusing to resume from it; set train.resume to an earlier "
               "checkpoint directory (step-*)");
}

std::string first_non_finite_in_shard(const std::string& path) {
  SafetensorsFile file(path);
  for (const std::string& key : file.names()) {
    const at::Tensor t = file.tensor(key);
    if (at::isFloatingType(t.scalar_type()) && !finite(t)) return key.substr(0, key.find('#'));
  }
  return "";
}

std::string non_finite_problem(const std::string& path) {
  try {
    const std::string bad = first_non_finite_in_shard(path);
    return bad.empty() ? "" : "tensor '" + bad + "' holds NaN or infinite values";
  } catch (const UserError& e) {
    return e.what();
  }
}

void require_some_step_trained(int64_t steps, int64_t skipped, const std::string& resumed_from) {
  if (steps <= 0 || skipped < steps) return;
  user_error("training diverged: all ", steps, " steps of this run had non-finite gradients and were skipped",
             resumed_from.empty() ? "" : str(" (weights from ", resumed_from, ")"),
             "; nothing was trained and no checkpoint of them is saved; resume from an earlier checkpoint "
             "(train.resume: DIR) or lower train.lr");
}

}  // namespace kiln
