// The experiment config: one typed struct tree, plain data with no YAML or torch, so every concern
// (data, models, parallel, trainer) can take the part it needs. trainer/config.h reads it from YAML
// and validates it.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/model_config.h"

namespace kiln {

enum class MixMode { proportional, telechat };
template <>
struct ChoiceNames<MixMode> {
  static constexpr const char* names[] = {"proportional", "telechat"};
};
enum class LossAverage { token, sample };
template <>
struct ChoiceNames<LossAverage> {
  static constexpr const char* names[] = {"token", "sample"};
};
enum class LrSchedule { cosine, linear, constant };
template <>
struct ChoiceNames<LrSchedule> {
  static constexpr const char* names[] = {"cosine", "linear", "constant"};
};
enum class Precision { automatic, bf16, fp16, fp32 };  // automatic: bf16 on CUDA, fp32 on CPU
template <>
struct ChoiceNames<Precision> {
  static constexpr const char* names[] = {"auto", "bf16", "fp16", "fp32"};
};
enum class Checkpointing { none, selective, full };  // activation checkpointing
template <>
struct ChoiceNames<Checkpointing> {
  static constexpr const char* names[] = {"none", "selective", "full"};
};
enum class Offload { none, cpu };
template <>
struct ChoiceNames<Offload> {
  static constexpr const char* names[] = {"none", "cpu"};
};
enum class DeviceChoice { automatic, cpu, cuda };  // automatic: CUDA when available
template <>
struct ChoiceNames<DeviceChoice> {
  static constexpr const char* names[] = {"auto", "cpu", "cuda"};
};
enum class Backend { automatic, nccl, mpi };  // automatic: NCCL on CUDA, MPI otherwise
template <>
struct ChoiceNames<Backend> {
  static constexpr const char* names[] = {"auto", "nccl", "mpi"};
};
enum class BaseQuant { none, nf4 };
template <>
struct ChoiceNames<BaseQuant> {
  static constexpr const char* names[] = {"none", "nf4"};
};

struct MixPoint {
  int64_t step = 0;
  std::map<std::string, double> weights;  // source path (as written in data.json) -> weight
};

struct DataConfig {
  std::string mixture;                    // data.json, a .jsonl file, or a prepared token-store dir
  MixMode mix = MixMode::proportional;
  std::vector<MixPoint> schedule;         // optional weight schedule, linear between points
  std::string format = "auto";            // auto | text | alpaca | telechat | firefly | messages
  std::string chat_template = "firefly";  // YAML key `template`: a name, or "custom"
  std::map<std::string, std::string> custom_template;  // YAML key `custom_template` (template: custom)
  std::string loss = "all_turns";                      // all_tokens | all_turns | last_turn
  LossAverage loss_average = LossAverage::token;
  int64_t seq_len = 128;
  bool packing = true;
  std::string overlong = "auto";   // auto (split text, truncate SFT) | split | truncate | drop
  bool redraw_each_epoch = false;  // mix telechat: a new pool every epoch (TeleChat: one pool)
  std::string eval;                // eval data (same forms as mixture), optional
  int64_t eval_samples = 0;        // 0 = all of eval
  int64_t workers = 2;             // prep threads
  bool skip_bad_lines = false;
  int64_t prefetch = 2;  // batches prepared ahead by the loader thread
};

struct TrainConfig {
  std::string run_dir = "runs/default";
  int64_t seed = 1234;
  int64_t steps = 100;
  int64_t micro_batch_size = 2;
  int64_t global_batch_size = 0;  // 0 = micro_batch_size * dp (no accumulation)
  double lr = 3e-4;
  double min_lr = 3e-5;
  int64_t warmup_steps = 0;
  LrSchedule schedule = LrSchedule::cosine;
  double weight_decay = 0.1;
  std::vector<double> betas = {0.9, 0.95};
  double eps = 1e-8;
  double grad_clip = 1.0;                         // 0 = off
  Precision precision = Precision::automatic;
  Checkpointing activation_checkpointing = Checkpointing::none;
  std::string resume = "auto";                    // auto | never | DIR
  int64_t log_every = 1;
  int64_t eval_every = 0;                  // 0 = never during training
  int64_t max_skipped_steps = 10;          // fp16: consecutive overflow steps before giving up
  Offload optimizer_offload = Offload::none;
  DeviceChoice device = DeviceChoice::automatic;
  int64_t threads = 0;                     // CPU intra-op threads, 0 = torch default
  std::string tensorboard = "auto";        // event files: auto (RUN_DIR/tb) | none | DIR
};

struct ParallelConfig {
  int64_t tp = 1;
  int64_t pp = 1;
  int64_t virtual_stages = 1;
  int64_t zero = 0;  // 0 | 1 | 2 | 3
  bool sequence_parallel = false;
  bool zero3_keep_gathered = false;
  Backend backend = Backend::automatic;
  double timeout_s = 600;
  int64_t bucket_mb = 25;  // gradient bucket size for reduce-scatter / all-reduce
};

struct CheckpointConfig {
  int64_t every = 0;  // 0 = only at the end
  int64_t keep_last = 2;
};

struct LoraConfig {
  int64_t rank = 0;  // 0 = off
  double alpha = 16;
  double dropout = 0.0;
  std::vector<std::string> targets = {"all_linear"};
  bool rslora = false;
  double lr_ratio = 1.0;  // LoRA+: B's learning rate over A's (and the DoRA magnitude's, as PEFT)
  bool dora = false;      // weight-decomposed LoRA (magnitude vector per output row)
  BaseQuant quantize_base = BaseQuant::none;
  bool double_quant = true;
  std::string init_from;  // peft:DIR
};

struct GenerateConfig {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0 = greedy
  int64_t top_k = 0;
  double top_p = 1.0;
};

struct Config {
  std::string source;  // the YAML file it was read from
  ModelConfig model;
  std::string tokenizer;  // sentencepiece model path
  DataConfig data;
  TrainConfig train;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  LoraConfig lora;
  GenerateConfig generate;
};

}  // namespace kiln
