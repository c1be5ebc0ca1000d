// The layout and run validators (trainer/config.h): one place that says what kiln plan and
// kiln train refuse, so both refuse the same configs with the same line
// (tests/e2e/test_plan_refusals.sh counts the refusal sites here).
#include <string>
#include <vector>

#include "base/error.h"
#include "data/chat_template.h"
#include "data/vocab_check.h"
#include "trainer/config.h"

namespace kiln {

int64_t data_parallel_size(const Config& cfg, int64_t world_size) {
  return world_size / (cfg.parallel.tp * cfg.parallel.pp);
}

int64_t accumulation_steps(const Config& cfg, int64_t world_size) {
  int64_t dp = data_parallel_size(cfg, world_size);
  int64_t global =
      cfg.train.global_batch_size > 0 ? cfg.train.global_batch_size : cfg.train.micro_batch_size * dp;
  return global / (cfg.train.micro_batch_size * dp);
}

void validate_layout(const Config& cfg, int64_t world_size) {
  const auto& p = cfg.parallel;
  const auto& m = cfg.model;
  if (world_size % (p.tp * p.pp) != 0)
    user_error("parallel.tp (", p.tp, ") x parallel.pp (", p.pp, ") must divide the number of processes (",
               world_size, "); valid: tp*pp*dp == ", world_size);
  // Tensor parallel splits whole heads; key/value heads are split too (num_kv_heads % tp == 0)
  // or each one shared by tp / num_kv_heads ranks (tp % num_kv_heads == 0).
  const int64_t kv = m.kv_heads();
  if (m.num_heads % p.tp != 0 || (kv % p.tp != 0 && p.tp % kv != 0)) {
    std::string valid;
    for (int64_t t = 1; t <= m.num_heads; ++t)
      if (m.num_heads % t == 0 && (kv % t == 0 || t % kv == 0)) valid += str(valid.empty() ? "" : ", ", t);
    user_error("parallel.tp (", p.tp, ") must divide model.num_heads (", m.num_heads,
               ") and either divide model.num_kv_heads (", kv, ") or be a multiple of it; valid tp: ", valid);
  }
  if (m.num_layers % (p.pp * p.virtual_stages) != 0)
    user_error("model.num_layers (", m.num_layers,
               ") must be divisible by parallel.pp x parallel.virtual_stages (", p.pp * p.virtual_stages,
               ")");
  int64_t dp = data_parallel_size(cfg, world_size);
  int64_t global =
      cfg.train.global_batch_size > 0 ? cfg.train.global_batch_size : cfg.train.micro_batch_size * dp;
  if (global % (cfg.train.micro_batch_size * dp) != 0)
    user_error("train.global_batch_size (", global, ") must be a multiple of train.micro_batch_size (",
               cfg.train.micro_batch_size, ") x data-parallel size (", dp, ")");
  // What this build cannot run yet: refused here, so `kiln plan` and `kiln train` agree.
  if (p.pp > 1)
    user_error(
        "parallel.pp > 1: pipeline parallelism is not in this build yet; valid: pp: 1 (tensor parallel "
        "with parallel.tp, data parallel with parallel.zero 0-3)");
  if (p.tp > 1 && (cfg.train.trainable != std::vector<std::string>{"*"} || cfg.train.trainable_new_rows_only))
    user_error(
        "train.trainable / train.trainable_new_rows_only: frozen tensors are not sharded over tensor "
        "parallel yet; valid with parallel.tp > 1: every parameter trained (train.trainable: [\"*\"])");
  if (p.tp > 1 && cfg.lora.rank > 0 && cfg.lora.quantize_base == BaseQuant::nf4)
    user_error(
        "lora.quantize_base: nf4 (QLoRA): the NF4 base is not split over tensor parallel; valid with "
        "parallel.tp > 1: lora.quantize_base: none (LoRA on the 16-bit base), or QLoRA with parallel.tp: 1 "
        "and parallel.zero: 3, which shards the NF4 base over data parallel");
  if (p.sequence_parallel && p.tp == 1)
    user_error("parallel.sequence_parallel: true needs tensor parallelism; valid: false, or parallel.tp > 1");
  if (p.sequence_parallel && cfg.data.seq_len % p.tp != 0)
    user_error("parallel.sequence_parallel: data.seq_len (", cfg.data.seq_len,
               ") must be a multiple of parallel.tp (", p.tp,
               ") so each rank holds an equal slice of the sequence; valid seq_len: ",
               (cfg.data.seq_len / p.tp + 1) * p.tp, " or false");
}

void validate_run(const Config& cfg, int64_t world_size) {
  validate_layout(cfg, world_size);
  const auto& p = cfg.parallel;
  if (cfg.train.eval_every > 0 && cfg.data.eval.empty())
    user_error("train.eval_every: ", cfg.train.eval_every, " needs data.eval");
#ifndef KILN_WITH_NCCL
  if (p.backend == Backend::nccl)
    user_error("parallel.backend: nccl, but this kiln was built without NCCL; use auto or mpi");
#endif
  if (p.backend == Backend::nccl && cfg.train.device == DeviceChoice::cpu)
    user_error("parallel.backend: nccl needs CUDA tensors (a GPU run); use auto or mpi on the CPU");
  // Data options that no data can make right.
  if (cfg.data.mixture.empty())
    user_error("data.mixture: required (a data.json, a .jsonl or a `kiln prep` dir)");
  if (cfg.data.mix == MixMode::telechat && !cfg.data.schedule.empty() && !cfg.data.redraw_each_epoch)
    user_error(
        "data.schedule: with data.mix: telechat the pool is drawn once, so a schedule would never "
        "apply; set data.redraw_each_epoch: true (a new pool, with the weights then in force, "
        "every epoch) or drop the schedule");
  // LoRA / QLoRA (trainer/lora_setup.h).
  const LoraConfig& l = cfg.lora;
  for (const std::string& t : l.targets)
    if (t != "all_linear" && t != "q_proj" && t != "k_proj" && t != "v_proj" && t != "o_proj" &&
        t != "gate_proj" && t != "up_proj" && t != "down_proj")
      user_error("lora.targets: '", t,
                 "' is not a projection kiln adapts; valid: q_proj, k_proj, v_proj, o_proj, "
                 "gate_proj, up_proj, down_proj or all_linear (lm_head never)");
  if (l.rank == 0 && (l.quantize_base != BaseQuant::none || (!l.init_from.empty() && l.init_from != "none")))
    user_error("lora.quantize_base / lora.init_from need adapters: set lora.rank > 0");
  if (l.rank > 0 &&
      (cfg.train.trainable != std::vector<std::string>{"*"} || cfg.train.trainable_new_rows_only))
    user_error(
        "train.trainable: a LoRA run (lora.rank > 0) trains its adapters only; valid: '*' (the default)");
  chat_template(cfg.data.chat_template, cfg.data.custom_template);  // unknown name, custom without {content}
  check_tokenizer_fits(cfg);  // a tokenizer larger than the model: one line, before any weights
}

}  // namespace kiln
