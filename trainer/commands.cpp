// The verbs train, eval, plan, generate and export (prep and tokenizer live in data/).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <iostream>
#include <nlohmann/json.hpp>

#include "data/hf_tokenizer.h"
#include "data/mix_table.h"
#include "models/hf.h"
#include "models/weight_source.h"
#include "parallel/communicator.h"
#include "models/tp_layers.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/lora_setup.h"
#include "base/error.h"
#include "base/log.h"
#include "trainer/run_dir.h"
#include "trainer/trainer.h"

namespace kiln {
namespace {

Config config_from(const Args& a, const char* usage) {
  if (a.help) {
    std::printf("%s", usage);
    std::exit(0);
  }
  if (a.positional.size() != 1) user_error("expected one CONFIG file\n", usage);
  return load_config(a.positional[0], a.sets);
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f %s", b, units[u]);
  return buf;
}

// 172352 -> "172.35 K", 6.74e9 -> "6.74 B".
std::string human_count(double n) {
  const char* units[] = {"", " K", " M", " B", " T"};
  int u = 0;
  while (n >= 1000 && u < 4) n /= 1000, ++u;
  char buf[32];
  std::snprintf(buf, sizeof(buf), u ? "%.2f%s" : "%.0f%s", n, units[u]);
  return buf;
}

}  // namespace

int cmd_train(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"exit-after"}, {});
  Config cfg = config_from(
      a,
      "usage: kiln train CONFIG [--set key.path=value ...] [--exit-after N]\n"
      "  Trains as the config says: one process, or every rank of an mpirun job.\n"
      "  Resumes from the latest checkpoint in train.run_dir (train.resume: auto).\n"
      "  --exit-after N   stop cleanly with a checkpoint after N steps of this run\n"
      "  SIGTERM / SIGUSR2 / Ctrl-C save a checkpoint at the end of the current step and exit 0;\n"
      "  SIGUSR1 saves one and training goes on.\n");
  launch_info();
  log0("resolved config:\n", to_yaml(cfg));
  TrainOptions opts;
  opts.exit_after = a.get_int("exit-after", 0);
  TrainResult r = train(cfg, opts);
  if (!r.losses.empty())
    log0("done: steps ", r.first_step, " -> ", r.last_step, ", last loss ", r.losses.back());
  return 0;
}

int cmd_eval(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {}, {});
  Config cfg = config_from(
      a,
      "usage: kiln eval CONFIG [--set key.path=value ...]\n"
      "  Mean loss over the trained tokens of data.eval, with the weights of the latest checkpoint\n"
      "  in train.run_dir (or model.init_from). Prints one JSON line: {\"loss\": L, \"tokens\": N}.\n");
  EvalResult r = evaluate(cfg);
  std::cout << nlohmann::json{{"loss", r.loss}, {"tokens", r.tokens}}.dump() << std::endl;
  return 0;
}

int cmd_plan(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"world"}, {"explain"});
  if (a.has("explain")) {
    std::printf("%s", describe_keys().c_str());
    return 0;
  }
  Config cfg = config_from(
      a,
      "usage: kiln plan CONFIG [--set key.path=value ...] [--world N] [--explain]\n"
      "  Validates the config for N processes (default: this launch's), prints the resolved\n"
      "  config, parameter count, FLOPs per token and per-rank memory.  --explain lists every key.\n");
  const int64_t world = a.has("world") ? a.get_int("world", 1) : launch_info().world_size;
  validate_run(cfg, world);
  const ModelConfig& m = cfg.model;
  const auto& p = cfg.parallel;
  const int64_t dp = data_parallel_size(cfg, world);
  const double n = static_cast<double>(m.num_parameters());
  const bool gpu = cfg.train.device == DeviceChoice::cuda;
  const double bytes = cfg.train.precision == Precision::fp32 || (cfg.train.precision == Precision::automatic && !gpu) ? 4 : 2;
  // Tensor parallel: the rank's slices exactly (models/tp_layers.h: replicated norms and kv heads
  // counted whole, the vocabulary padded to a multiple of tp).
  const double per_rank_params = static_cast<double>(tp_rank_parameters(m, static_cast<int>(p.tp))) / p.pp;
  double param_b = per_rank_params * bytes / (p.zero >= 3 ? dp : 1);
  double grad_b = per_rank_params * 4 / (p.zero >= 2 ? dp : 1);
  double optim_b = per_rank_params * 12 / (p.zero >= 1 ? dp : 1);
  // Activations per layer per sequence (Korthikanti et al.): T*h*(34 + 5*H*T/h) bytes at 16 bit.
  const double T = static_cast<double>(cfg.data.seq_len), h = static_cast<double>(m.hidden_size);
  const double layers = static_cast<double>(m.num_layers) / p.pp;
  // With tensor parallel t (Korthikanti et al. table 2): T*h*(10 + 24/t + 5*H*T/(h*t)); the 10 (norm
  // and dropout regions, replicated) becomes 10/t with sequence parallel; selective drops the
  // 5*H*T/h attention term; full keeps each layer's input (1/t of it with sequence parallel).
  const double t = static_cast<double>(p.tp);
  auto activations = [&](bool sp) {
    const double attn = cfg.train.activation_checkpointing == Checkpointing::none ? 5 * m.num_heads * T / h / t : 0;
    const double per_layer = T * h * ((sp ? 10 / t : 10) + 24 / t + attn) * bytes / 2;
    if (cfg.train.activation_checkpointing == Checkpointing::full)
      return (T * h * bytes * layers / (sp ? t : 1) + per_layer) * cfg.train.micro_batch_size;
    return per_layer * layers * cfg.train.micro_batch_size;
  };
  const double act_b = activations(p.sequence_parallel);

  // LoRA / QLoRA (trainer/lora_setup.h): the frozen base needs no gradient or optimizer state,
  // only the adapters do; an NF4 base is about half a byte per weight.
  std::string lora_line;
  if (lora_enabled(cfg)) {
    const LoraMemory lm = lora_memory(cfg);
    const double a = static_cast<double>(lm.adapter_params);
    // Under ZeRO-3 the packed NF4 base is sharded over dp (the dense rest of the base is kept whole).
    const double packed_b = (lm.packed_bytes + lm.scale_bytes) / (p.zero >= 3 ? dp : 1);
    const double base_b = (packed_b + lm.dense_params * bytes) / (p.tp * p.pp);
    param_b = base_b + a * bytes / (p.tp * p.pp) / (p.zero >= 3 ? dp : 1);
    grad_b = a * 4 / (p.tp * p.pp) / (p.zero >= 2 ? dp : 1);
    optim_b = a * 12 / (p.tp * p.pp) / (p.zero >= 1 ? dp : 1);
    char buf[512];
    std::snprintf(buf, sizeof(buf),
                  "lora:              rank %lld, %s adapter parameters (%.3f%% of the model)%s\n"
                  "base:              %s packed NF4 (%s parameters) | scales %s | %s in %s (%s parameters)\n",
                  (long long)cfg.lora.rank, human_count(a).c_str(), 100.0 * a / n,
                  cfg.lora.quantize_base == BaseQuant::nf4 ? ", QLoRA" : "", human_bytes(lm.packed_bytes).c_str(),
                  human_count(static_cast<double>(lm.quantized_params)).c_str(), human_bytes(lm.scale_bytes).c_str(),
                  human_bytes(lm.dense_params * bytes).c_str(), bytes == 4 ? "fp32" : "16-bit",
                  human_count(static_cast<double>(lm.dense_params)).c_str());
    lora_line = buf;
  }
  std::printf("%s", to_yaml(cfg).c_str());
  std::printf("\n# plan for %lld processes\n", static_cast<long long>(world));
  std::printf("layout:            tp %lld x pp %lld x dp %lld, ZeRO-%lld, %lld micro-batches per step\n",
              (long long)p.tp, (long long)p.pp, (long long)dp, (long long)p.zero,
              (long long)accumulation_steps(cfg, world));
  std::printf("parameters:        %.0f (%s)\n", n, human_count(n).c_str());
  std::printf("flops per token:   %.4g (training, seq %lld)\n", m.flops_per_token(cfg.data.seq_len),
              (long long)cfg.data.seq_len);
  std::printf("%s", lora_line.c_str());
  std::printf("memory per rank:   params %s | grads %s | optimizer %s | activations ~%s | total ~%s\n",
              human_bytes(param_b).c_str(), human_bytes(grad_b).c_str(), human_bytes(optim_b).c_str(),
              human_bytes(act_b).c_str(), human_bytes(param_b + grad_b + optim_b + act_b).c_str());
  if (p.tp > 1)
    std::printf("activations:       ~%s without sequence parallel, ~%s with (tp %lld)\n",
                human_bytes(activations(false)).c_str(), human_bytes(activations(true)).c_str(), (long long)p.tp);
  std::printf("%s", describe_mixture(cfg).c_str());
  return 0;
}

int cmd_generate(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"prompt"}, {});
  Config cfg =
      config_from(a,
                  "usage: kiln generate CONFIG --prompt TEXT [--set generate.temperature=0.8 ...]\n"
                  "  Continues TEXT with the latest checkpoint of train.run_dir (or model.init_from).\n"
                  "  Greedy by default; generate.temperature / top_k / top_p / max_new_tokens sample.\n");
  if (!a.has("prompt")) user_error("--prompt TEXT is required");
  std::string prompt = a.get("prompt");
  std::cout << prompt << generate_text(cfg, prompt) << std::endl;
  return 0;
}

int cmd_export(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"out", "format", "dtype"}, {});
  const char* usage =
      "usage: kiln export CHECKPOINT_DIR|RUN_DIR --out DIR [--format hf|peft] [--dtype fp32|bf16|fp16]\n"
      "  Writes the checkpoint's weights as a Hugging Face model (config.json + safetensors,\n"
      "  sharded above 5 GB), assembled from the checkpoint's shards one tensor at a time, with the\n"
      "  run's tokenizer (tokenizer.model, tokenizer_config.json, special_tokens_map.json) and\n"
      "  generation_config.json. The checkpoint is verified first (sizes, checksums, coverage).\n"
      "  A LoRA run's checkpoint: --format hf merges the adapters into the base (model.init_from,\n"
      "  dequantized for QLoRA); --format peft writes adapter_config.json + adapter_model.safetensors.\n";
  if (a.help) {
    std::printf("%s", usage);
    return 0;
  }
  if (a.positional.size() != 1 || !a.has("out")) user_error("expected a checkpoint and --out DIR\n", usage);
  const std::string format = a.get("format", "hf");
  if (format != "hf" && format != "peft") user_error("--format ", format, ": valid: hf | peft");
  const std::string dtype_name = a.get("dtype", "fp32");
  at::ScalarType dtype = at::kFloat;
  if (dtype_name == "bf16")
    dtype = at::kBFloat16;
  else if (dtype_name == "fp16")
    dtype = at::kHalf;
  else if (dtype_name != "fp32")
    user_error("--dtype ", dtype_name, ": valid: fp32 | bf16 | fp16");
  const std::string dir = resolve_checkpoint(a.positional[0]);
  Config cfg = load_config(dir + "/config.yaml");
  if (format == "peft" || lora_enabled(cfg)) {  // LoRA hook (trainer/lora_setup.h)
    if (format == "peft")
      export_peft(dir, a.get("out"));
    else
      export_merged_hf(dir, dtype, a.get("out"));
    log0("exported ", dir, " -> ", a.get("out"), " (", format == "peft" ? "PEFT adapter" : "adapters merged", ")");
    return 0;
  }
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [n, shape] : checkpoint_tensors(dir)) shapes[n] = shape;
  std::unique_ptr<WeightSource> source = checkpoint_weights_source(dir);
  save_hf_streamed(
      cfg.model, dtype,
      [&](const std::string& name) {
        auto it = shapes.find(name);
        if (it == shapes.end()) user_error(dir, ": checkpoint has no tensor '", name, "' for the export");
        return source->read_full(name, it->second);
      },
      a.get("out"));
  export_tokenizer(cfg, a.get("out"));
  log0("exported ", dir, " -> ", a.get("out"));
  return 0;
}

int cmd_verify(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {}, {});
  const char* usage =
      "usage: kiln verify CHECKPOINT_DIR|RUN_DIR\n"
      "  Checks a checkpoint as a resume does (every file present, sizes, xxh3-64 checksums,\n"
      "  safetensors headers, slices covering every tensor) and prints one line per file.\n"
      "  A run directory: every step-* in it. Exit 0 when all are usable, 2 otherwise.\n";
  if (a.help) {
    std::printf("%s", usage);
    return 0;
  }
  if (a.positional.size() != 1) user_error("expected a checkpoint or run directory\n", usage);
  namespace fs = std::filesystem;
  const fs::path path = a.positional[0];
  std::vector<fs::path> dirs;
  if (fs::is_directory(path / "checkpoints")) {
    for (const auto& e : fs::directory_iterator(path / "checkpoints"))
      if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0) dirs.push_back(e.path());
    std::sort(dirs.begin(), dirs.end());
  } else if (fs::is_directory(path)) {
    dirs.push_back(path);
  } else {
    user_error(path.string(), ": no such checkpoint or run directory");
  }
  if (dirs.empty()) user_error(path.string(), ": has no checkpoints");
  bool all_ok = true;
  for (const fs::path& d : dirs) {
    const CheckpointCheck check = verify_checkpoint(d.string());
    for (const auto& f : check.files)
      std::printf("%-4s %s  %lld bytes%s%s\n", f.problem.empty() ? "ok" : "BAD", (d / f.name).string().c_str(),
                  static_cast<long long>(f.bytes), f.problem.empty() ? "" : "  ", f.problem.c_str());
    std::printf("%s %s%s%s\n", check.ok() ? "usable  " : "UNUSABLE", d.string().c_str(), check.ok() ? "" : ": ",
                check.problem.c_str());
    all_ok = all_ok && check.ok();
  }
  return all_ok ? 0 : 2;
}

}  // namespace kiln
