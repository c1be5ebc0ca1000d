// A few training steps of a tiny Llama through ZeroOptimizer, the way the trainer runs them:
// every micro-batch of this rank forward and backward with loss = token sum / tokens of the
// global batch, reduce_gradients, global-norm clipping, AdamW. Shared by the single-process
// ZeRO-3 tests (tests/unit) and the dp equivalence tests under mpirun (tests/parallel).
#pragma once
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/batch.h"
#include "models/llama.h"
#include "models/recompute.h"
#include "parallel/communicator.h"
#include "parallel/zero.h"

namespace kiln::test {

struct ZeroRunSpec {
  int stage = 0;
  int steps = 5;
  int64_t global_batch = 8;  // sequences per step, over all dp ranks
  int64_t micro_batch = 2;   // sequences per forward
  int64_t seq_len = 16;
  int64_t layers = 2;
  bool tied = false;
  double lr = 1e-2;
  double clip = 0.5;            // small enough to clip in the first steps
  int64_t bucket_bytes = 1024;  // small buckets: several per step
  bool keep_gathered = false;   // ZeRO-3: units stay gathered from forward to backward
  bool recompute_layers = false;  // activation checkpointing: each decoder layer recomputed in backward
  int resume_after = -1;  // >= 0: after that many steps, a fresh model and optimizer load the state
  // eps 1e-5, not 1e-8: with a tiny eps Adam's first updates are g / (|g| + eps), so a gradient
  // element that is nearly zero turns fp32 summation-order noise (which differs between
  // layouts) into a difference of up to lr / eps times it. At eps 1e-6 one element of layer 0's
  // o_proj (gradient ~1e-9) moved the tensor by 1.5e-5 relative under ZeRO-2/3 at dp 2 once the
  // products went through OpenBLAS (whose rounding differs from MKL's); at 1e-5 the comparison
  // is about the reduction again (typical gradients here are 1e-3, far above eps).
  AdamWOptions adam = AdamWOptions{/*weight_decay=*/0.1, /*beta1=*/0.9, /*beta2=*/0.95, /*eps=*/1e-5};
};

struct ZeroRunResult {
  std::vector<double> losses;                              // [step], mean over the global batch
  std::vector<std::pair<std::string, at::Tensor>> params;  // final fp32 values, model order
  std::vector<int64_t> resident_after_step;                // [step] measured parameter bytes
  int64_t model_bytes = 0;                                 // all trained parameters, fp32
  std::vector<double> norms;                               // [step] gradient norm before clipping
  int64_t peak_gradient_bytes = 0;  // the most gradient bytes held at once in any step (measured)
};

// Activation checkpointing as the trainer installs it (train.activation_checkpointing: full):
// each decoder layer (units 1..L) runs without keeping activations and is recomputed in backward.
inline void install_layer_recompute(LlamaImpl& model) {
  const int64_t layers = static_cast<int64_t>(model.layers.size());
  model.set_unit_runner([layers](int64_t unit, const at::Tensor& x, const UnitFn& fn) {
    if (unit < 1 || unit > layers || !at::GradMode::is_enabled()) return fn(x);
    auto hooks = std::make_shared<RecomputeHooks>();
    hooks->always_backward = true;
    auto f = fn;
    return recompute({x}, [f](const std::vector<at::Tensor>& in) { return f(in[0]); }, hooks);
  });
}

inline ModelConfig tiny_model_config(const ZeroRunSpec& spec) {
  ModelConfig cfg;
  cfg.vocab_size = 64;
  cfg.hidden_size = 32;
  cfg.num_layers = spec.layers;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.max_seq_len = spec.seq_len;
  cfg.tie_embeddings = spec.tied;
  return cfg;
}

// Labels that row `row` of step `step`'s global batch ignores: its last (5 row + 3 step) mod
// (seq_len / 2 + 1), so ranks and micro-batches train different numbers of tokens and
// a loss divided by a rank's own trained tokens, or averaged over ranks, differs from the
// global batch's mean. The last ones, not the first: inputs after the last trained label get
// exactly zero gradient, while masked prompts would give them tiny ones, which Adam's first
// steps turn into O(lr) differences between layouts (see eps above).
inline int64_t ignored_labels(int step, int64_t row, const ZeroRunSpec& spec) {
  return (5 * row + 3 * step) % (spec.seq_len / 2 + 1);
}

// Rows [first, first + count) of step `step`'s global batch: random tokens, the same on every
// rank and for every layout, with ignored_labels() masked. Two batches alternate, so that the
// loss falls within 5 steps.
inline Batch rows_of_step(int step, int64_t first, int64_t count, const ZeroRunSpec& spec, int64_t vocab) {
  at::Generator gen = at::detail::createCPUGenerator(/*seed_in=*/9000 + step % 2);
  at::Tensor all = at::randint(vocab, {spec.global_batch, spec.seq_len + 1}, gen, at::kLong);
  at::Tensor rows = all.narrow(0, first, count);
  Batch b;
  b.input_ids = rows.narrow(1, 0, spec.seq_len).contiguous();
  b.labels = rows.narrow(1, 1, spec.seq_len).clone();
  b.loss_tokens = 0;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t ignored = ignored_labels(step, first + r, spec);
    b.labels[r].narrow(0, spec.seq_len - ignored, ignored).fill_(kIgnoreIndex);
    b.loss_tokens += spec.seq_len - ignored;
  }
  b.position_ids = at::arange(spec.seq_len, at::kLong).expand({count, spec.seq_len}).contiguous();
  return b;
}

// Trained tokens of step `step`'s whole global batch (what the trainer all-reduces).
inline double global_loss_tokens(int step, const ZeroRunSpec& spec) {
  double n = 0;
  for (int64_t row = 0; row < spec.global_batch; ++row) n += spec.seq_len - ignored_labels(step, row, spec);
  return n;
}

inline ZeroRunResult run_zero(Communicator& dp, const ZeroRunSpec& spec) {
  const ModelConfig cfg = tiny_model_config(spec);
  at::manual_seed(1234);
  Llama model(cfg);
  model->reset_parameters();
  if (spec.recompute_layers) install_layer_recompute(*model);
  ZeroRunResult result;
  for (const auto& p : model->parameters()) result.model_bytes += p.numel() * p.element_size();
  auto opt_ptr = std::make_unique<ZeroOptimizer>(*model, dp, spec.stage, spec.bucket_bytes, spec.adam, spec.keep_gathered);
  const int64_t per_rank = spec.global_batch / dp.size();
  for (int step = 0; step < spec.steps; ++step) {
    if (step == spec.resume_after) {
      // Resume: a fresh model with other weights and a fresh optimizer, from this one's state.
      const std::vector<TensorSlice> state = opt_ptr->state_slices();
      const int64_t taken = opt_ptr->steps_taken();
      opt_ptr.reset();
      at::manual_seed(4321);
      model = Llama(cfg);
      model->reset_parameters();
      if (spec.recompute_layers) install_layer_recompute(*model);
      opt_ptr = std::make_unique<ZeroOptimizer>(*model, dp, spec.stage, spec.bucket_bytes, spec.adam, spec.keep_gathered);
      opt_ptr->load_state(state, taken);
    }
    ZeroOptimizer& opt = *opt_ptr;
    opt.zero_grad();
    // The divisor as the trainer finds it: this rank's trained tokens, summed over dp.
    std::vector<Batch> batches;
    at::Tensor counts = at::zeros({1}, at::kDouble);
    for (int64_t m = 0; m < per_rank; m += spec.micro_batch) {
      batches.push_back(rows_of_step(step, dp.rank() * per_rank + m, spec.micro_batch, spec, cfg.vocab_size));
      counts += static_cast<double>(batches.back().loss_tokens);
    }
    dp.all_reduce(counts);
    const double global_tokens = counts.item<double>();
    TORCH_CHECK(global_tokens == global_loss_tokens(step, spec), "trained tokens ", global_tokens);
    double loss_part = 0;
    for (const Batch& b : batches) {
      at::Tensor loss = lm_loss_sum(model->forward(b), b.labels) / global_tokens;
      loss.backward();
      loss_part += loss.item<double>();
    }
    opt.reduce_gradients();
    const double norm = opt.grad_norm();
    at::Tensor loss_t = at::full({1}, loss_part, at::kDouble);
    dp.all_reduce(loss_t);
    result.losses.push_back(loss_t.item<double>());
    result.norms.push_back(norm);
    result.peak_gradient_bytes = std::max(result.peak_gradient_bytes, opt.peak_gradient_bytes());
    opt.step(spec.lr, norm > spec.clip ? spec.clip / (norm + 1e-6) : 1.0);
    result.resident_after_step.push_back(opt.resident_parameter_bytes());
  }
  result.params = opt_ptr->gather_parameters();
  return result;
}

// max |a - b| / max |b| over a tensor: the relative error of a whole tensor.
inline double relative_error(const at::Tensor& a, const at::Tensor& b) {
  const double scale = std::max(b.abs().max().item<double>(), 1e-30);
  return (a - b).abs().max().item<double>() / scale;
}

}  // namespace kiln::test
