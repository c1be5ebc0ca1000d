// Test helper (not installed, not part of kiln's CLI): kiln's logits for a fixed batch, so the
// export tests can compare them with what transformers computes on the exported directory.
//
//   build/kiln_test_logits CONFIG --out LOGITS.safetensors [--tokens T] [--export DIR] [--set k=v ...]
//
// The model is built as `kiln eval` and `kiln generate` build it: the latest checkpoint of
// train.run_dir, else model.init_from (hf:DIR, ckpt:DIR), else the seeded init. LOGITS holds
//   input_ids  (2, T) int64, random ids from a fixed seed; position_ids 0..T-1
//   logits     (2, T, V) float32, fp32 on the CPU
// --export DIR writes the loaded weights with save_hf, the writer behind `kiln export`, so a
// Hugging Face fixture imported by kiln (init_from: hf:DIR) can be re-exported without training.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <exception>

#include "data/batch.h"
#include "models/hf.h"
#include "models/safetensors.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "base/error.h"
#include "trainer/model_setup.h"

namespace {

int run(int argc, char** argv) {
  kiln::Args a = kiln::parse_args(argc, argv, 1, {"out", "tokens", "export"}, {});
  if (a.positional.size() != 1 || !a.has("out"))
    kiln::user_error("usage: kiln_test_logits CONFIG --out FILE [--tokens T] [--export DIR] [--set k=v]");
  kiln::Config cfg = kiln::load_config(a.positional[0], a.sets);
  std::string from;
  kiln::Llama model = kiln::build_model(cfg, /*prefer_run_dir=*/true, &from);
  model->eval();
  at::NoGradGuard no_grad;
  const int64_t T = a.get_int("tokens", 24);
  at::Generator gen = at::detail::createCPUGenerator(/*seed_in=*/4242);
  kiln::Batch b;
  b.input_ids = at::randint(cfg.model.vocab_size, {2, T}, gen, at::kLong);
  b.position_ids = at::arange(T, at::kLong).expand({2, T}).contiguous();
  b.labels = at::full({2, T}, kiln::kIgnoreIndex, at::kLong);
  // The real vocabulary (model.vocab_pad_to's padding columns dropped, as the export drops them).
  at::Tensor logits = model->forward(b).to(at::kFloat).narrow(-1, 0, cfg.model.vocab_size).contiguous();
  kiln::write_safetensors(a.get("out"), {{"input_ids", b.input_ids}, {"logits", logits}});
  if (a.has("export")) {
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value());
    // save_hf wants transformers' order, as read_checkpoint_weights gives it to `kiln export`.
    std::vector<std::pair<std::string, at::Tensor>> ordered;
    for (const auto& [name, shape] : kiln::hf_parameter_shapes(cfg.model))
      for (const auto& [n, t] : named)
        if (n == name) ordered.emplace_back(n, t);
    kiln::save_hf(ordered, cfg.model, a.get("export"));
  }
  std::fprintf(stderr, "kiln_test_logits: weights from %s, %lld tokens\n", from.c_str(),
               static_cast<long long>(T));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const kiln::UserError& e) {
    std::fprintf(stderr, "kiln_test_logits: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln_test_logits: internal error: %s\n", e.what());
    return 3;
  }
}
