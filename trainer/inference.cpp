// eval and generate: the model with its trained weights (latest checkpoint of the run, or
// model.init_from) run without gradients.
#include <ATen/ATen.h>

#include <algorithm>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "data/vocab_check.h"
#include "models/llama.h"
#include "parallel/communicator.h"
#include "base/error.h"
#include "base/log.h"
#include "trainer/model_setup.h"
#include "trainer/sampling.h"
#include "trainer/trainer.h"

namespace kiln {

EvalResult evaluate_model(LlamaImpl& model, const Config& cfg, const c10::Device& device, Communicator* dp) {
  if (cfg.data.eval.empty())
    user_error("data.eval: not set; name the eval data (a .jsonl, data.json or prepared dir)");
  const bool was_training = model.is_training();
  model.eval();
  at::NoGradGuard no_grad;
  EvalLoader loader(cfg, dp ? dp->rank() : 0, dp ? dp->size() : 1);
  at::Tensor sums = at::zeros({2}, at::kDouble);  // [loss sum, trained tokens]
  Batch b;
  while (loader.next(b)) {
    Batch db{
        b.input_ids.to(device), b.labels.to(device), b.position_ids.to(device), b.packed, b.loss_tokens, {}};
    sums[0] += lm_loss_sum(model.forward(db), db.labels).item<double>();
    sums[1] += static_cast<double>(b.loss_tokens);
  }
  if (dp) all_reduce_host(*dp, sums, device);
  if (was_training) model.train();
  const double tokens = sums[1].item<double>();
  if (tokens == 0) user_error("data.eval: ", cfg.data.eval, " has no trained tokens");
  return {sums[0].item<double>() / tokens, static_cast<int64_t>(tokens)};
}

EvalResult evaluate(const Config& cfg) {
  ComputeSetup setup = compute_setup(cfg);
  std::string from;
  Llama model = build_model(cfg, /*prefer_run_dir=*/true, &from);
  model->to(setup.device, setup.dtype);
  log0("eval: weights from ", from);
  return evaluate_model(*model, cfg, setup.device, nullptr);
}

std::string generate_text(const Config& cfg, const std::string& prompt) {
  if (cfg.tokenizer.empty()) user_error("tokenizer: not set; generate needs the sentencepiece model");
  Tokenizer tok(cfg.tokenizer);
  check_vocab_fits(tok.vocab_size(), cfg.tokenizer, cfg.model);
  ComputeSetup setup = compute_setup(cfg);
  std::string from;
  Llama model = build_model(cfg, /*prefer_run_dir=*/true, &from);
  model->to(setup.device, setup.dtype);
  model->eval();
  log0("generate: weights from ", from);
  at::NoGradGuard no_grad;
  at::manual_seed(static_cast<uint64_t>(cfg.train.seed));

  std::vector<int32_t> ids = tok.encode(prompt);
  ids.insert(ids.begin(), tok.bos_id());
  const size_t prompt_len = ids.size();
  const auto& g = cfg.generate;
  for (int64_t i = 0; i < g.max_new_tokens; ++i) {
    // The window the model serves: the last max_seq_len tokens (no KV cache: small models).
    const size_t start =
        ids.size() > static_cast<size_t>(cfg.model.max_seq_len) ? ids.size() - cfg.model.max_seq_len : 0;
    std::vector<int64_t> window(ids.begin() + start, ids.end());
    const int64_t T = static_cast<int64_t>(window.size());
    Batch b;
    b.input_ids = at::tensor(window, at::kLong).view({1, T}).to(setup.device);
    b.position_ids = at::arange(T, at::kLong).view({1, T}).to(setup.device);
    b.labels = at::full({1, T}, kIgnoreIndex, at::kLong).to(setup.device);
    at::Tensor logits = model->forward(b).select(1, T - 1).squeeze(0).to(at::kFloat).cpu();  // (V)
    // Rows the tokenizer has no piece for (a model grown past it, padding) are never generated.
    logits = logits.narrow(0, 0, std::min<int64_t>(logits.size(0), tok.vocab_size()));
    const int64_t next = next_token(logits, g);
    if (next == tok.eos_id()) break;
    ids.push_back(static_cast<int32_t>(next));
  }
  // A last character cut off by max_new_tokens is held back rather than printed as U+FFFD.
  const std::vector<int32_t> generated(ids.begin() + prompt_len, ids.end());
  return tok.decode(
      std::vector<int32_t>(generated.begin(), generated.begin() + tok.complete_prefix(generated)));
}

}  // namespace kiln
