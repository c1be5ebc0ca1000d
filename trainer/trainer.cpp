// The training loop (see trainer.h). One step: every micro-batch of this rank forward and
// backward (loss = sum over trained tokens / trained tokens of the whole global batch, so
// accumulation and data parallelism need no further scaling), gradients reduced over dp,
// global-norm clipping, AdamW on the fp32 master, then the log line, metrics and checkpoint.
#include "trainer/trainer.h"

#include <ATen/ATen.h>
#include <sys/resource.h>
#include <torch/cuda.h>
#ifdef KILN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "models/llama.h"
#include "models/recompute.h"
#include "parallel/communicator.h"
#include "parallel/mesh.h"
#include "parallel/zero.h"
#include "trainer/checkpoint.h"
#include "trainer/error.h"
#include "trainer/file_io.h"
#include "trainer/log.h"
#include "trainer/lr_schedule.h"
#include "trainer/model_setup.h"
#include "trainer/run_dir.h"
#include "trainer/state_check.h"
#include "trainer/stop_signals.h"

namespace fs = std::filesystem;

namespace kiln {
namespace {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return str(s / 3600, "h", (s % 3600) / 60 < 10 ? "0" : "", (s % 3600) / 60, "m");
  if (s >= 60) return str(s / 60, "m", s % 60 < 10 ? "0" : "", s % 60, "s");
  return str(s, "s");
}

// CUDA: the caching allocator's peak of allocated bytes (torch.cuda.max_memory_allocated());
// otherwise the process's peak resident set.
int64_t peak_memory_bytes(const c10::Device& device) {
#ifdef KILN_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
#endif
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

// metrics.jsonl keeps the rows of steps <= `step` (a resumed run rewrites what follows).
void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string kept, line;
  while (std::getline(in, line)) {
    try {
      auto js = nlohmann::json::parse(line);
      if (js.value("step", int64_t(0)) <= step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      // a torn last line from a killed run: dropped
    }
  }
  in.close();
  write_file_atomic(path.string(), kept);
}

void install_activation_checkpointing(LlamaImpl& model, const std::string& mode) {
  if (mode == "selective") {
    for (auto& layer : model.layers) layer->self_attn->recompute_core = true;
  } else if (mode == "full") {
    const int64_t first_layer = model.stage().has_embedding ? 1 : 0;
    const int64_t end_layer = first_layer + static_cast<int64_t>(model.layers.size());
    model.set_unit_runner([first_layer, end_layer](int64_t unit, const at::Tensor& x,
                                                   const std::function<at::Tensor(const at::Tensor&)>& fn) {
      if (unit < first_layer || unit >= end_layer || !at::GradMode::is_enabled()) return fn(x);
      auto f = fn;
      return recompute({x}, [f](const std::vector<at::Tensor>& in) { return f(in[0]); });
    });
  }
}

Batch to_device(Batch b, const c10::Device& device) {
  if (device.is_cpu()) return b;
  b.input_ids = b.input_ids.to(device, /*non_blocking=*/true);
  b.labels = b.labels.to(device, /*non_blocking=*/true);
  b.position_ids = b.position_ids.to(device, /*non_blocking=*/true);
  return b;
}

}  // namespace

TrainResult train(const Config& cfg, const TrainOptions& opts) {
  const LaunchInfo& launch = launch_info();
  ComputeSetup setup = compute_setup(cfg);
  validate_layout(cfg, launch.world_size);
  if (cfg.parallel.tp > 1 || cfg.parallel.pp > 1)
    user_error(
        "parallel.tp / parallel.pp > 1: tensor and pipeline parallelism are not in this build yet; "
        "valid: tp: 1, pp: 1 (data parallel with parallel.zero 0-3)");
  if (cfg.lora.rank > 0) user_error("lora.rank: LoRA is not in this build yet; valid: 0");
  if (cfg.parallel.sequence_parallel)
    user_error("parallel.sequence_parallel: needs tensor parallelism, not in this build yet; valid: false");
  if (cfg.train.eval_every > 0 && cfg.data.eval.empty())
    user_error("train.eval_every: ", cfg.train.eval_every, " needs data.eval");
  if (cfg.train.threads > 0) at::set_num_threads(static_cast<int>(cfg.train.threads));

  Mesh mesh(make_world_communicator(cfg.parallel.backend, setup.device.is_cuda(), cfg.parallel.timeout_s),
            static_cast<int>(cfg.parallel.tp), static_cast<int>(cfg.parallel.pp));
  Communicator& dp = mesh.dp();
  Communicator& world = mesh.world();
  const int64_t dp_size = mesh.dp_size();
  const int64_t accum = accumulation_steps(cfg, launch.world_size);
  const int64_t global_batch = cfg.train.micro_batch_size * dp_size * accum;
  const bool rank0 = world.rank() == 0;
  const std::string where = launch_layout();  // collective: every rank takes part

  const fs::path run_dir = cfg.train.run_dir;
  const std::string config_yaml = to_yaml(cfg);
  // Lock, environment checks and the resume point, decided on rank 0 for every rank (run_dir.h).
  const RunDir run_dir_guard = open_run_dir(cfg, world, setup.device);
  const std::string resume_dir = run_dir_guard.resume_dir;
  if (rank0) {
    write_file_atomic((run_dir / "config.yaml").string(), config_yaml);
    log0("kiln train: ", cfg.source, " -> ", run_dir.string());
    log0("processes: ", where);
    log0("layout: world ", launch.world_size, " = tp ", mesh.tp_size(), " x pp ", mesh.pp_size(), " x dp ",
         dp_size, ", ZeRO-", cfg.parallel.zero, ", ", accum, " micro-batches of ", cfg.train.micro_batch_size,
         " per rank per step, global batch ", global_batch, " x ", cfg.data.seq_len, " tokens, ",
         setup.device.is_cuda() ? "cuda" : "cpu", " ", c10::toString(setup.dtype));
  }

  std::string weights_from;
  Llama model = build_model(cfg, /*prefer_run_dir=*/false, &weights_from);
  ZeroOptimizer optimizer(
      *model, dp, static_cast<int>(cfg.parallel.zero), cfg.parallel.bucket_mb << 20,
      AdamWOptions{cfg.train.weight_decay, cfg.train.betas[0], cfg.train.betas[1], cfg.train.eps},
      cfg.parallel.zero3_keep_gathered);
  DataLoader loader(cfg, mesh.coords().dp, dp_size, global_batch);

  int64_t start_step = 0;
  int64_t tokens_seen = 0;
  if (!resume_dir.empty()) {
    CheckpointState st = read_checkpoint_state(resume_dir);
    const std::vector<TensorSlice> resume_slices = read_checkpoint_slices(resume_dir);
    require_finite_checkpoint(resume_dir, resume_slices);
    optimizer.load_state(resume_slices, st.step);
    loader.restore(st.data.get<LoaderState>());
    start_step = st.step;
    tokens_seen = st.extra.value("tokens_seen", int64_t(0));
    log0("resumed from ", resume_dir, " at step ", start_step);
  } else {
    log0("weights: ", weights_from);
  }
  model->to(setup.device, setup.dtype);
  // The fp32 optimizer state follows the model, unless offloaded to the host.
  optimizer.to(cfg.train.optimizer_offload == "cpu" ? c10::Device(c10::kCPU) : setup.device);
  if (cfg.train.optimizer_offload == "cpu" && setup.device.is_cuda())
    log0("optimizer_offload: cpu: fp32 master weights and AdamW moments stay on the host");
  if (cfg.parallel.zero == 3 && cfg.train.activation_checkpointing == "full")
    log0("activation checkpointing: ZeRO-3 already recomputes each layer in backward (it re-gathers it)");
  else
    install_activation_checkpointing(*model, cfg.train.activation_checkpointing);
  log0("model: ", model->config().num_parameters(), " parameters, ",
       model->config().flops_per_token(cfg.data.seq_len) / 1e9, " GFLOP per token");

  const fs::path metrics_path = run_dir / "metrics.jsonl";
  std::ofstream metrics;
  if (rank0) {
    truncate_metrics(metrics_path, start_step);
    metrics.open(metrics_path, std::ios::app);
  }
  StopSignals signals;  // SIGUSR1: save and go on; SIGTERM/SIGINT/SIGUSR2: save and exit 0

  TrainResult result;
  result.first_step = start_step;
  const std::vector<std::string> sources = loader.source_names();
  const bool per_sample = cfg.data.loss_average == "sample";
  int64_t skipped_in_row = 0;
  int64_t skipped_this_run = 0;
  auto run_start = std::chrono::steady_clock::now();
  int64_t steps_this_run = 0;

  auto save = [&](int64_t step) {
    CheckpointState st;
    st.step = step;
    st.data = loader.state();
    st.extra = {{"tokens_seen", tokens_seen}, {"dp", dp_size}, {"zero", cfg.parallel.zero}};
    const auto weights = optimizer.gather_parameters();
    const auto slices = optimizer.state_slices();
    require_finite_state(world, setup.device, slices, weights,
                         str("not saving the checkpoint of step ", step));
    save_checkpoint(cfg.train.run_dir, world, st, weights, slices, config_yaml, cfg.checkpoint.keep_last);
  };

  for (int64_t step = start_step; step < cfg.train.steps; ++step) {
    auto t0 = std::chrono::steady_clock::now();
    optimizer.zero_grad();
    std::vector<Batch> batches;
    std::vector<at::Tensor> weights;  // loss_average: sample — per-token weights of each batch
    batches.reserve(accum);
    at::Tensor counts = at::zeros({2}, at::kDouble);  // [trained tokens, samples] of the global batch
    for (int64_t i = 0; i < accum; ++i) {
      batches.push_back(loader.next());
      counts[0] += static_cast<double>(batches.back().loss_tokens);
      if (per_sample) {
        SampleLossWeights w = sample_loss_weights(batches.back());
        weights.push_back(w.weights.to(setup.device));
        counts[1] += static_cast<double>(w.samples);
      }
    }
    // The loss divisor on every rank: trained tokens (or samples) of the whole global batch.
    all_reduce_host(dp, counts, setup.device);
    const double global_loss_tokens = std::max(1.0, counts[0].item<double>());
    const double divisor = per_sample ? std::max(1.0, counts[1].item<double>()) : global_loss_tokens;
    // This rank's share of the step's loss, summed on the device: one host sync per step.
    at::Tensor loss_t = at::zeros({1}, at::TensorOptions().dtype(at::kDouble).device(setup.device));
    for (size_t i = 0; i < batches.size(); ++i) {
      Batch db = to_device(std::move(batches[i]), setup.device);
      at::Tensor logits = model->forward(db);
      at::Tensor loss = (per_sample ? lm_loss_weighted_sum(logits, db.labels, weights[i])
                                    : lm_loss_sum(logits, db.labels)) /
                        divisor;
      loss.backward();
      loss_t += loss.detach().to(at::kDouble);
    }
    test_step_delay();  // KILN_TEST_STEP_SLEEP_S, tests only
    optimizer.reduce_gradients();
    const double norm = optimizer.grad_norm();
    dp.all_reduce(loss_t);
    const double loss = loss_t.item<double>();
    const double lr = lr_at(cfg.train, step);
    if (!std::isfinite(norm)) {
      // fp16 overflow or a bad batch: skip the update, stop after too many in a row.
      ++skipped_in_row;
      ++skipped_this_run;
      optimizer.zero_grad();
      log0("step ", step + 1, ": non-finite gradient norm, update skipped (", skipped_in_row, " in a row)");
      if (skipped_in_row > cfg.train.max_skipped_steps)
        user_error("training diverged: ", skipped_in_row,
                   " steps in a row with non-finite gradients "
                   "(train.max_skipped_steps: ",
                   cfg.train.max_skipped_steps, ")");
    } else {
      skipped_in_row = 0;
      const double scale =
          cfg.train.grad_clip > 0 && norm > cfg.train.grad_clip ? cfg.train.grad_clip / (norm + 1e-6) : 1.0;
      optimizer.step(lr, scale);
    }
    const int64_t step_tokens = global_batch * cfg.data.seq_len;
    tokens_seen += step_tokens;
    // Global per-source tokens consumed so far (the loader's count at a step boundary).
    const std::vector<int64_t> source_tokens = loader.state().source_tokens;
    result.losses.push_back(loss);
    result.last_step = step + 1;
    ++steps_this_run;

    auto t1 = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(t1 - t0).count();
    const double elapsed = std::chrono::duration<double>(t1 - run_start).count();
    const double eta = elapsed / steps_this_run * (cfg.train.steps - step - 1);
    if (rank0) {
      nlohmann::json row = {{"step", step + 1},
                            {"loss", loss},
                            {"lr", lr},
                            {"grad_norm", norm},
                            {"loss_tokens", static_cast<int64_t>(global_loss_tokens)},
                            {"tokens", tokens_seen},
                            {"tokens_per_s", step_tokens / dt},
                            {"step_s", dt},
                            {"peak_mem_bytes", peak_memory_bytes(setup.device)}};
      for (size_t s = 0; s < sources.size() && s < source_tokens.size(); ++s)
        row["source_tokens"][sources[s]] = source_tokens[s];
      row["packing_efficiency"] = loader.packing_efficiency();
      row["samples_truncated"] = loader.truncated();  // over-long samples so far (data.overlong)
      row["samples_dropped"] = loader.dropped();
      metrics << row.dump() << "\n" << std::flush;
      if ((step + 1) % cfg.train.log_every == 0 || step + 1 == cfg.train.steps) {
        char line[256];
        std::snprintf(
            line, sizeof(line),
            "step %lld/%lld | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | peak mem %.2f GiB | eta %s",
            static_cast<long long>(step + 1), static_cast<long long>(cfg.train.steps), loss, lr, norm,
            step_tokens / dt, peak_memory_bytes(setup.device) / double(1 << 30),
            format_duration(eta).c_str());
        log0(line);
      }
    }

    if (cfg.train.eval_every > 0 && ((step + 1) % cfg.train.eval_every == 0 || step + 1 == cfg.train.steps)) {
      EvalResult ev = evaluate_model(*model, cfg, setup.device, &dp);
      log0("eval at step ", step + 1, ": loss ", ev.loss, " over ", ev.tokens, " tokens");
      if (rank0)
        metrics
            << nlohmann::json{{"step", step + 1}, {"eval_loss", ev.loss}, {"eval_tokens", ev.tokens}}.dump()
            << "\n"
            << std::flush;
    }
    const bool last = step + 1 == cfg.train.steps;
    const bool exit_now = opts.exit_after > 0 && steps_this_run >= opts.exit_after;
    const StopSignals::Request sig = signals.poll(world, setup.device);  // every rank: the same step
    const bool signalled = sig.stop;
    if (last || exit_now || signalled)
      require_some_step_trained(steps_this_run, skipped_this_run, resume_dir);
    if (last || exit_now || sig.save || (cfg.checkpoint.every > 0 && (step + 1) % cfg.checkpoint.every == 0))
      save(step + 1);
    if (sig.save && !sig.stop)
      log0("checkpoint on signal ", sig.signal, " (SIGUSR1) after step ", step + 1, "; training goes on");
    if (signalled) {
      log0("stopping on signal ", sig.signal, " after step ", step + 1,
           " (checkpoint saved; `kiln train` resumes)");
      break;
    }
    if (exit_now && !last) break;
  }
  return result;
}

}  // namespace kiln
