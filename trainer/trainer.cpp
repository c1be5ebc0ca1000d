// The training loop (see trainer.h), in pieces: setup (layout, mesh, the rank's model and
// optimizer built from its weight source), resume, step, metrics, checkpoint. One step: every
// micro-batch of this rank through the StepRunner (loss = sum over trained tokens / trained
// tokens of the whole global batch, so accumulation and data parallelism need no further
// scaling), gradients reduced over dp, global-norm clipping, AdamW on the fp32 master, then the
// log line, metrics and checkpoint.
#include "trainer/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
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
#include <mutex>
#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "models/llama.h"
#include "models/lora.h"
#include "models/recompute.h"
#include "parallel/communicator.h"
#include "parallel/mesh.h"
#include "models/weight_source.h"
#include "models/tp_layers.h"
#include "models/tp_weights.h"
#include "models/ops/cpu_gemm.h"
#include "parallel/zero.h"
#include "trainer/checkpoint.h"
#include "base/error.h"
#include "base/file_io.h"
#include "base/log.h"
#include "trainer/lora_setup.h"
#include "trainer/lr_schedule.h"
#include "trainer/model_setup.h"
#include "trainer/run_dir.h"
#include "trainer/state_check.h"
#include "trainer/step_runner.h"
#include "trainer/stop_signals.h"
#include "trainer/tensorboard.h"
#include "trainer/trainable.h"
#include "trainer/test_hooks.h"

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

void install_activation_checkpointing(LlamaImpl& model, Checkpointing mode) {
  if (mode == Checkpointing::selective) {
    for (auto& layer : model.layers) layer->self_attn->recompute_core = true;
  } else if (mode == Checkpointing::full) {
    const int64_t first_layer = model.stage().has_embedding ? 1 : 0;
    const int64_t end_layer = first_layer + static_cast<int64_t>(model.layers.size());
    model.set_unit_runner([first_layer, end_layer](int64_t unit, const at::Tensor& x,
                                                   const std::function<at::Tensor(const at::Tensor&)>& fn) {
      if (unit < first_layer || unit >= end_layer || !at::GradMode::is_enabled()) return fn(x);
      auto f = fn;
      // Backward even when x needs no gradient: behind a frozen embedding (LoRA) the layer's own
      // adapters still do.
      static const auto hooks = [] {
        auto h = std::make_shared<RecomputeHooks>();
        h->always_backward = true;
        return std::shared_ptr<const RecomputeHooks>(h);
      }();
      return recompute({x}, [f](const std::vector<at::Tensor>& in) { return f(in[0]); }, hooks);
    });
  }
}

struct StepStats {
  double loss = 0, norm = 0, lr = 0, loss_tokens = 0, seconds = 0;
};

// One run of `kiln train`: what setup builds and every later piece uses.
class Trainer {
 public:
  Trainer(const Config& cfg, const TrainOptions& opts)
      : cfg_(cfg),
        opts_(opts),
        launch_(launch_info()),
        setup_(compute_setup(cfg)),
        mesh_(make_world_communicator(cfg.parallel.backend, setup_.device.is_cuda(), cfg.parallel.timeout_s),
              static_cast<int>(cfg.parallel.tp), static_cast<int>(cfg.parallel.pp)),
        dp_size_(mesh_.dp_size()),
        accum_(accumulation_steps(cfg, launch_.world_size)),
        global_batch_(cfg.train.micro_batch_size * dp_size_ * accum_),
        rank0_(mesh_.world().rank() == 0),
        run_dir_(cfg.train.run_dir),
        config_yaml_(to_yaml(cfg)) {}

  TrainResult run();

 private:
  void find_resume();
  void build();
  void restore();
  StepStats step(int64_t step);
  void write_metrics(int64_t step, const StepStats& s);
  void save(int64_t step);

  const Config& cfg_;
  TrainOptions opts_;
  const LaunchInfo& launch_;
  ComputeSetup setup_;
  Mesh mesh_;
  int64_t dp_size_, accum_, global_batch_;
  bool rank0_;
  fs::path run_dir_;
  std::string config_yaml_;
  std::string resume_dir_;
  RunDir run_dir_guard_;
  Llama model_{nullptr};
  TpShardMap tp_shards_;  // tensor parallel: where this rank's parameters sit in the global tensors
  std::unique_ptr<ZeroOptimizer> optimizer_;
  std::unique_ptr<DataLoader> loader_;
  std::unique_ptr<StepRunner> runner_;
  std::shared_ptr<LoraDropoutClock> clock_ = std::make_shared<LoraDropoutClock>();  // LoRA dropout
  std::ofstream metrics_;
  std::unique_ptr<TensorBoardWriter> tb_;
  std::vector<std::string> sources_;
  int64_t start_step_ = 0, tokens_seen_ = 0;
  int64_t peak_gradient_bytes_ = 0;  // the most gradient bytes held at once in any step (measured)
};

// Lock, environment checks, the resume point (verified, checkpoint.h) and the resume policy,
// decided on rank 0 for every rank (run_dir.h): nothing is written if any of them refuses.
void Trainer::find_resume() {
  run_dir_guard_ = open_run_dir(cfg_, mesh_.world(), setup_.device);
  resume_dir_ = run_dir_guard_.resume_dir;
}

// The rank's model: built with placeholders, then only what the rank keeps is read from the
// weight source (the checkpoint when resuming, else model.init_from or the seeded init).
void Trainer::build() {
  LlamaBuild how{StageSpec{}, {}, /*meta=*/true};
  if (mesh_.tp_size() > 1)  // tensor parallel: this rank's slices only (models/tp_layers.h)
    how.tp = std::make_shared<TensorParallel>(mesh_.tp(), cfg_.parallel.sequence_parallel);
  how.projections = run_projections(cfg_, clock_, how.tp);  // dense or tp, LoRA-wrapped for LoRA runs
  model_ = Llama(cfg_.model, how);
  tp_shards_ = model_->tp_shards();
  std::unique_ptr<WeightSource> source;
  TrainableSet trainable;
  if (lora_enabled(cfg_)) {
    // LoRA hook (trainer/lora_setup.h): the frozen base from model.init_from (NF4 for QLoRA), the
    // adapters from the checkpoint when resuming; the optimizer holds only the adapters.
    // Under tp each rank reads only its slices of both (rank_source).
    std::unique_ptr<WeightSource> base = rank_source(initial_weights(cfg_, *model_), *model_);
    std::unique_ptr<WeightSource> ckpt =
        resume_dir_.empty() ? nullptr : rank_source(checkpoint_weights_source(resume_dir_), *model_);
    LoraLoad lora = load_lora_model(*model_, cfg_, *base, ckpt.get());
    source = std::move(lora.adapters);
    trainable = std::move(lora.trainable);
  } else {
    source = rank_source(
        resume_dir_.empty() ? initial_weights(cfg_, *model_) : checkpoint_weights_source(resume_dir_), *model_);
    trainable = apply_trainable(*model_, cfg_);  // train.trainable (trainer/trainable.h)
  }
  AdamWOptions hyper{cfg_.train.weight_decay, cfg_.train.betas[0], cfg_.train.betas[1], cfg_.train.eps,
                     trainable.frozen_leading};
  hyper.lr_scale = lora_lr_scales(*model_, cfg_);  // LoRA+ (lora.lr_ratio)
  optimizer_ = std::make_unique<ZeroOptimizer>(*model_, mesh_.dp(), static_cast<int>(cfg_.parallel.zero),
                                               cfg_.parallel.bucket_mb << 20, hyper,
                                               cfg_.parallel.zero3_keep_gathered, *source);
  shard_lora_base(*model_, cfg_, mesh_.dp());  // QLoRA under ZeRO-3: the NF4 base sharded over dp
  if (mesh_.tp_size() > 1) {
    std::vector<std::string> names;
    for (const auto& [name, shape] : optimizer_->trained_shapes()) names.push_back(name);
    optimizer_->set_grad_norm_group(&mesh_.tp(), tp_norm_weights(names, tp_shards_, mesh_.tp_size()));
  }
  if (!trainable.frozen.empty() || !trainable.frozen_leading.empty())
    log0("trainable: ", trainable.trained_elements, " of ", trainable.total_elements, " parameters (",
         trainable.trained.size(), " tensors", trainable.frozen_leading.empty() ? "" : ", new vocabulary rows only",
         "); frozen: ", trainable.frozen.size(), " tensors");
  {
    // Parameters the optimizer does not train (frozen) are read whole.
    at::NoGradGuard no_grad;
    for (auto& item : model_->named_parameters())
      if (is_shape_only(item.value())) item.value().set_data(source->read_full(item.key(), item.value().sizes().vec()));
  }
  if (resume_dir_.empty()) log0("weights: ", cfg_.model.init_from != "none" ? cfg_.model.init_from : source->describe());
  loader_ = std::make_unique<DataLoader>(cfg_, mesh_.coords().dp, dp_size_, global_batch_);
  log0(format_mix_table(loader_->mix_shares(), cfg_.data.mix));
  clock_->seed = static_cast<uint64_t>(cfg_.train.seed);
  runner_ = no_pipeline_runner(*model_, setup_.device, clock_);
}

void Trainer::restore() {
  if (resume_dir_.empty()) return;
  CheckpointState st = read_checkpoint_state(resume_dir_);
  // Parameters frozen when the checkpoint was written start from its weights (trainer/trainable.h).
  optimizer_->load_state(*rank_source(resume_state_source(resume_dir_), *model_), st.step);
  // What this rank loaded must be finite (every rank checks its own share; all stop together).
  const std::vector<TensorSlice> loaded = optimizer_->state_slices();
  at::Tensor bad = at::full({1}, first_non_finite(loaded).empty() ? 0.0 : 1.0, at::kDouble);
  all_reduce_host(mesh_.world(), bad, setup_.device, ReduceOp::Max);
  if (bad.item<double>() > 0) {
    require_finite_checkpoint(resume_dir_, loaded);
    user_error(resume_dir_, ": another rank's share holds NaN or infinite values; refusing to resume from it");
  }
  loader_->restore(st.data.get<LoaderState>());
  const std::vector<std::string> rng = checkpoint_rng_states(resume_dir_);
  if (static_cast<int>(rng.size()) == mesh_.world().size()) {
    const std::string& hex = rng[mesh_.world().rank()];
    at::Tensor bytes = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::kByte);
    for (int64_t i = 0; i < bytes.numel(); ++i)
      bytes.data_ptr<uint8_t>()[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(bytes);
  }
  start_step_ = st.step;
  tokens_seen_ = st.extra.value("tokens_seen", int64_t(0));
  log0("resumed from ", resume_dir_, " at step ", start_step_);
}

StepStats Trainer::step(int64_t step) {
  auto t0 = std::chrono::steady_clock::now();
  const bool per_sample = cfg_.data.loss_average == LossAverage::sample;
  optimizer_->zero_grad();
  std::vector<MicroBatch> micro(accum_);
  at::Tensor counts = at::zeros({2}, at::kDouble);  // [trained tokens, samples] of the global batch
  for (size_t k = 0; k < micro.size(); ++k) {
    MicroBatch& mb = micro[k];
    mb.step = step;
    mb.index = mesh_.coords().dp * accum_ + static_cast<int64_t>(k);  // global, as the loader orders rows
    mb.batch = loader_->next();
    counts[0] += static_cast<double>(mb.batch.loss_tokens);
    if (per_sample) {
      SampleLossWeights w = sample_loss_weights(mb.batch);
      mb.token_weights = w.weights;
      counts[1] += static_cast<double>(w.samples);
    }
  }
  // The loss divisor on every rank: trained tokens (or samples) of the whole global batch.
  all_reduce_host(mesh_.dp(), counts, setup_.device);
  StepStats s;
  s.loss_tokens = std::max(1.0, counts[0].item<double>());
  const double divisor = per_sample ? std::max(1.0, counts[1].item<double>()) : s.loss_tokens;
  at::Tensor loss = runner_->run(micro, divisor).reshape({1});
  test_step_delay();  // KILN_TEST_STEP_SLEEP_S, tests only
  optimizer_->reduce_gradients();
  peak_gradient_bytes_ = std::max(peak_gradient_bytes_, optimizer_->peak_gradient_bytes());
  s.norm = optimizer_->grad_norm();
  mesh_.dp().all_reduce(loss);
  s.loss = loss.item<double>();
  s.lr = lr_at(cfg_.train, step);
  if (!std::isfinite(s.norm)) {
    optimizer_->zero_grad();
  } else {
    const double scale =
        cfg_.train.grad_clip > 0 && s.norm > cfg_.train.grad_clip ? cfg_.train.grad_clip / (s.norm + 1e-6) : 1.0;
    optimizer_->step(s.lr, scale);
  }
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

void Trainer::write_metrics(int64_t step, const StepStats& s) {
  if (!rank0_) return;
  const int64_t step_tokens = global_batch_ * cfg_.data.seq_len;
  // Global per-source tokens consumed so far (the loader's count at a step boundary).
  const std::vector<int64_t> source_tokens = loader_->state().source_tokens;
  nlohmann::ordered_json row = {{"step", step + 1},
                        {"loss", s.loss},
                        {"lr", s.lr},
                        {"grad_norm", s.norm},
                        {"loss_tokens", static_cast<int64_t>(s.loss_tokens)},
                        {"tokens", tokens_seen_},
                        {"tokens_per_s", step_tokens / s.seconds},
                        {"step_s", s.seconds},
                        {"peak_mem_bytes", peak_memory_bytes(setup_.device)}};
  for (size_t i = 0; i < sources_.size() && i < source_tokens.size(); ++i)
    row["source_tokens"][sources_[i]] = source_tokens[i];
  row["packing_efficiency"] = loader_->packing_efficiency();
  row["samples_truncated"] = loader_->truncated();  // over-long samples so far (data.overlong)
  row["samples_dropped"] = loader_->dropped();
  row["samples_split"] = loader_->split();  // over-long documents split, and their pieces
  row["split_pieces"] = loader_->split_pieces();
  metrics_ << row.dump() << "\n" << std::flush;
  if (tb_) tb_->add_row(row);
}

void Trainer::save(int64_t step) {
  CheckpointState st;
  st.step = step;
  st.data = loader_->state();
  st.extra = {{"tokens_seen", tokens_seen_}};
  st.layout = {{"world", launch_.world_size}, {"tp", mesh_.tp_size()}, {"pp", mesh_.pp_size()},
               {"dp", dp_size_},              {"zero", cfg_.parallel.zero}};
  CheckpointShard shard;
  shard.slices = tp_global_slices(optimizer_->state_slices(), tp_shards_, mesh_.coords().tp);
  require_finite_state(mesh_.world(), setup_.device, shard.slices, {}, str("not saving the checkpoint of step ", step));
  shard.dp_rank = mesh_.coords().dp;
  shard.dp_size = static_cast<int>(dp_size_);
  // Global shapes: under ZeRO-3 the model's own tensors are empty between uses.
  shard.tensors = tp_global_shapes(optimizer_->trained_shapes(), tp_shards_);
  for (const auto& [name, shape] : shard.tensors) shard.trained.push_back(name);
  // A LoRA run stores no frozen tensor: its base is model.init_from's (trainer/lora_setup.h).
  for (const auto& item : model_->named_parameters())
    if (!item.value().requires_grad() && !lora_enabled(cfg_)) {
      shard.frozen.emplace_back(item.key(), item.value());
      shard.tensors.emplace_back(item.key(), item.value().sizes().vec());
    }
  save_checkpoint(cfg_.train.run_dir, mesh_.world(), st, shard, config_yaml_, cfg_.checkpoint.keep_last);
}

TrainResult Trainer::run() {
  const std::string where = launch_layout();  // collective: every rank takes part
  // The resume point first: nothing is written into the run directory if it is unusable.
  find_resume();
  if (rank0_) {
    write_file_atomic((run_dir_ / "config.yaml").string(), config_yaml_);
    log0("kiln train: ", cfg_.source, " -> ", run_dir_.string());
    log0("processes: ", where);
    log0("layout: world ", launch_.world_size, " = tp ", mesh_.tp_size(), " x pp ", mesh_.pp_size(), " x dp ",
         dp_size_, ", ZeRO-", cfg_.parallel.zero, ", ", accum_, " micro-batches of ", cfg_.train.micro_batch_size,
         " per rank per step, global batch ", global_batch_, " x ", cfg_.data.seq_len, " tokens, ",
         setup_.device.is_cuda() ? "cuda" : "cpu", " ", c10::toString(setup_.dtype));
    if (!setup_.device.is_cuda())
      log0("cpu: ", at::get_num_threads(), " threads, fp32 matrix products: ", cpu_gemm_name(),
           ", attention and fused ops: ", cpu_kernels_on() ? "kiln" : "aten", " (KILN_CPU_KERNELS=aten: LibTorch's)");
  }
  build();
  restore();
  model_->to(setup_.device, setup_.dtype);
  // The fp32 optimizer state follows the model, unless offloaded to the host.
  optimizer_->to(cfg_.train.optimizer_offload == Offload::cpu ? c10::Device(c10::kCPU) : setup_.device);
  if (cfg_.train.optimizer_offload == Offload::cpu && setup_.device.is_cuda())
    log0("optimizer_offload: cpu: fp32 master weights and AdamW moments stay on the host");
  if (cfg_.parallel.zero == 3 && cfg_.train.activation_checkpointing == Checkpointing::full)
    log0("activation checkpointing: ZeRO-3 already recomputes each layer in backward (it re-gathers it)");
  else
    install_activation_checkpointing(*model_, cfg_.train.activation_checkpointing);
  log0("model: ", model_->config().num_parameters(), " parameters, ",
       model_->config().flops_per_token(cfg_.data.seq_len) / 1e9, " GFLOP per token");

  const fs::path metrics_path = run_dir_ / "metrics.jsonl";
  if (rank0_) {
    truncate_metrics(metrics_path, start_step_);
    metrics_.open(metrics_path, std::ios::app);
  }
  tb_ = open_tensorboard(cfg_.train, rank0_, start_step_);
  StopSignals signals;  // SIGUSR1: save and go on; SIGTERM/SIGINT/SIGUSR2: save and exit 0

  TrainResult result;
  result.first_step = start_step_;
  sources_ = loader_->source_names();
  int64_t skipped_in_row = 0, skipped_this_run = 0;
  auto run_start = std::chrono::steady_clock::now();
  int64_t steps_this_run = 0;
  if (cfg_.train.steps == 0 && resume_dir_.empty()) {
    // Nothing to train: the initial weights (random init, an imported or resized model) as a
    // checkpoint of step 0, to export or to start other runs from.
    save(0);
    log0("train.steps: 0: saved the initial weights as step 0");
  }
  for (int64_t step = start_step_; step < cfg_.train.steps; ++step) {
    const StepStats s = this->step(step);
    if (!std::isfinite(s.norm)) {
      // fp16 overflow or a bad batch: the update was skipped; stop after too many in a row.
      ++skipped_in_row;
      ++skipped_this_run;
      log0("step ", step + 1, ": non-finite gradient norm, update skipped (", skipped_in_row, " in a row)");
      if (skipped_in_row > cfg_.train.max_skipped_steps)
        user_error("training diverged: ", skipped_in_row,
                   " steps in a row with non-finite gradients "
                   "(train.max_skipped_steps: ",
                   cfg_.train.max_skipped_steps, ")");
    } else {
      skipped_in_row = 0;
    }
    const int64_t step_tokens = global_batch_ * cfg_.data.seq_len;
    tokens_seen_ += step_tokens;
    result.losses.push_back(s.loss);
    result.last_step = step + 1;
    ++steps_this_run;
    write_metrics(step, s);
    if (rank0_ && ((step + 1) % cfg_.train.log_every == 0 || step + 1 == cfg_.train.steps)) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
      const double eta = elapsed / steps_this_run * (cfg_.train.steps - step - 1);
      char line[256];
      std::snprintf(
          line, sizeof(line),
          "step %lld/%lld | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | peak mem %.2f GiB | eta %s",
          static_cast<long long>(step + 1), static_cast<long long>(cfg_.train.steps), s.loss, s.lr, s.norm,
          step_tokens / s.seconds, peak_memory_bytes(setup_.device) / double(1 << 30), format_duration(eta).c_str());
      log0(line);
    }
    test_pause_after_step(step + 1, [&signals] { return signals.pending(); });  // tests only

    if (cfg_.train.eval_every > 0 && ((step + 1) % cfg_.train.eval_every == 0 || step + 1 == cfg_.train.steps)) {
      EvalResult ev = evaluate_model(*model_, cfg_, setup_.device, &mesh_.dp());
      log0("eval at step ", step + 1, ": loss ", ev.loss, " over ", ev.tokens, " tokens");
      const nlohmann::json eval_row = {{"step", step + 1}, {"eval_loss", ev.loss}, {"eval_tokens", ev.tokens}};
      if (rank0_) metrics_ << eval_row.dump() << "\n" << std::flush;
      if (tb_) tb_->add_row(eval_row);
    }
    const bool last = step + 1 == cfg_.train.steps;
    const bool exit_now = opts_.exit_after > 0 && steps_this_run >= opts_.exit_after;
    const StopSignals::Request sig = signals.poll(mesh_.world(), setup_.device);  // every rank: the same step
    const bool signalled = sig.stop;
    if (last || exit_now || signalled) require_some_step_trained(steps_this_run, skipped_this_run, resume_dir_);
    if (last || exit_now || sig.save || (cfg_.checkpoint.every > 0 && (step + 1) % cfg_.checkpoint.every == 0))
      save(step + 1);
    if (sig.save && !sig.stop)
      log0("checkpoint on signal ", sig.signal, " (SIGUSR1) after step ", step + 1, "; training goes on");
    if (signalled) {
      log0("stopping on signal ", sig.signal, " after step ", step + 1, " (checkpoint saved; `kiln train` resumes)");
      break;
    }
    if (exit_now && !last) break;
  }
  // Every rank's peak (the rank that runs out of memory first is the one that matters).
  at::Tensor peaks = at::zeros({mesh_.world().size()}, at::kDouble);
  peaks[mesh_.world().rank()] = static_cast<double>(peak_memory_bytes(setup_.device));
  all_reduce_host(mesh_.world(), peaks, setup_.device);
  std::string line;
  for (int64_t r = 0; r < peaks.numel(); ++r) line += str(" ", static_cast<int64_t>(peaks[r].item<double>() / (1 << 20)));
  log0("peak memory per rank (MiB, ", setup_.device.is_cuda() ? "CUDA allocator" : "resident", "):", line);
  // Gradients alone (ZeroOptimizer::peak_gradient_bytes): ZeRO-2 holds about 1/dp of ZeRO-1's.
  at::Tensor grads = at::zeros({mesh_.world().size()}, at::kDouble);
  grads[mesh_.world().rank()] = static_cast<double>(peak_gradient_bytes_);
  all_reduce_host(mesh_.world(), grads, setup_.device);
  line.clear();
  for (int64_t r = 0; r < grads.numel(); ++r) line += str(" ", static_cast<int64_t>(grads[r].item<double>()));
  log0("peak gradient bytes per rank (measured):", line);
  return result;
}

}  // namespace

TrainResult train(const Config& cfg, const TrainOptions& opts) {
  validate_run(cfg, launch_info().world_size);
  if (cfg.train.threads > 0) at::set_num_threads(static_cast<int>(cfg.train.threads));
  Trainer trainer(cfg, opts);
  return trainer.run();
}

}  // namespace kiln
