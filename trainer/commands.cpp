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
#include "trainer/memory_plan.h"
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
  // The runtime's own resident size, before this command allocates anything: `kiln train` starts
  // from the same binary with the same libraries loaded (trainer/memory_plan.h).
  const double runtime_bytes = resident_bytes_now();
  Args a = parse_args(argc, argv, 2, {"world"}, {"explain"});
  if (a.has("explain")) {
    std::printf("%s", describe_keys().c_str());
    return 0;
  }
  Config cfg = config_from(
      a,
      "usage: kiln plan CONFIG [--set key.path=value ...] [--world N] [--explain]\n"
      "  Validates the config for N processes (default: this launch's), prints the resolved\n"
      "  config, parameter count, FLOPs per token and per-rank peak memory.  --explain lists every key.\n");
  const int64_t world = a.has("world") ? a.get_int("world", 1) : launch_info().world_size;
  validate_run(cfg, world);
  const ModelConfig& m = cfg.model;
  const auto& p = cfg.parallel;
  const int64_t dp = data_parallel_size(cfg, world);
  const double n = static_cast<double>(m.num_parameters());
  const bool gpu = cfg.train.device == DeviceChoice::cuda;
  const double bytes = cfg.train.precision == Precision::fp32 || (cfg.train.precision == Precision::automatic && !gpu) ? 4 : 2;
  const MemoryPlan mp = plan_memory(cfg, world, gpu ? 0 : runtime_bytes + training_runtime_extra(world, gpu));

  // LoRA / QLoRA (trainer/lora_setup.h): the frozen base needs no gradient or optimizer state,
  // only the adapters do; an NF4 base is about half a byte per weight.
  std::string lora_line;
  if (lora_enabled(cfg)) {
    const LoraMemory lm = lora_memory(cfg);
    const double a = static_cast<double>(lm.adapter_params);
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
  const double step = mp.activations + mp.attention_mask + mp.loss + mp.layer_backward + mp.gathered;
  std::printf("memory per rank:   params %s | grads %s | optimizer %s | activations ~%s | total ~%s (peak, %s)\n",
              human_bytes(mp.params).c_str(), human_bytes(mp.grads + mp.grad_flat).c_str(),
              human_bytes(mp.optimizer).c_str(), human_bytes(step).c_str(), human_bytes(mp.peak).c_str(),
              mp.peak_phase.c_str());
  std::printf("peak terms:        %s %s | params %s | optimizer %s | data %s\n",
              gpu ? "CUDA allocator, no runtime" : "runtime", gpu ? "" : human_bytes(mp.runtime).c_str(),
              human_bytes(mp.params).c_str(), human_bytes(mp.optimizer).c_str(), human_bytes(mp.data).c_str());
  std::printf("                   grads %s + flat fp32 %s | saved activations %s | attention masks %s\n",
              human_bytes(mp.grads).c_str(), human_bytes(mp.grad_flat).c_str(), human_bytes(mp.activations).c_str(),
              human_bytes(mp.attention_mask).c_str());
  std::printf("                   head+loss %s | a layer's backward %s | ZeRO-3 gathered %s\n",
              human_bytes(mp.loss).c_str(), human_bytes(mp.layer_backward).c_str(), human_bytes(mp.gathered).c_str());
  std::printf("phases:            forward end %s | backward %s | gradient reduce %s\n",
              human_bytes(mp.forward_end).c_str(), human_bytes(mp.backward).c_str(), human_bytes(mp.reduce).c_str());
  std::printf("peak resident:     %.0f MiB per rank\n", mp.peak / (1 << 20));
  if (p.tp > 1)
    std::printf("activations:       ~%s without sequence parallel, ~%s with (tp %lld)\n",
                human_bytes(mp.activations_no_sp).c_str(), human_bytes(mp.activations_sp).c_str(), (long long)p.tp);
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
