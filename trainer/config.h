// Config: one typed struct tree read from YAML once (plus --set overrides), validated once.
// Every key has a default suited to the tiny CPU examples; describe_keys() lists them all with
// their meaning (`kiln plan --explain`). Errors are UserErrors naming the file, line and key.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "models/model_config.h"

namespace kiln {

struct MixPoint {
  int64_t step = 0;
  std::map<std::string, double> weights;  // source path (as written in data.json) -> weight
};

struct DataConfig {
  std::string mixture;                    // data.json, a .jsonl file, or a prepared token-store dir
  std::string mix = "proportional";       // proportional | telechat
  std::vector<MixPoint> schedule;         // optional weight schedule, linear between points
  std::string format = "auto";            // auto | text | alpaca | telechat | firefly | messages
  std::string chat_template = "firefly";  // YAML key `template`: a name, or "custom"
  std::map<std::string, std::string> custom_template;  // YAML key `custom_template` (template: custom)
  std::string loss = "all_turns";                      // all_tokens | all_turns | last_turn
  std::string loss_average = "token";                  // token | sample
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
  std::string schedule = "cosine";  // cosine | linear | constant
  double weight_decay = 0.1;
  std::vector<double> betas = {0.9, 0.95};
  double eps = 1e-8;
  double grad_clip = 1.0;                         // 0 = off
  std::string precision = "auto";                 // auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
  std::string activation_checkpointing = "none";  // none | selective | full
  std::string resume = "auto";                    // auto | never | DIR
  int64_t log_every = 1;
  int64_t eval_every = 0;                  // 0 = never during training
  int64_t max_skipped_steps = 10;          // fp16: consecutive overflow steps before giving up
  std::string optimizer_offload = "none";  // none | cpu
  std::string device = "auto";             // auto | cpu | cuda
  int64_t threads = 0;                     // CPU intra-op threads, 0 = torch default
  std::vector<std::string> trainable = {"*"};  // parameter-name patterns (trainer/trainable.h)
  bool trainable_new_rows_only = false;        // embedding/head: only rows beyond init_from's
  std::string tensorboard = "auto";        // event files: auto (RUN_DIR/tb) | none | DIR
};

struct ParallelConfig {
  int64_t tp = 1;
  int64_t pp = 1;
  int64_t virtual_stages = 1;
  int64_t zero = 0;  // 0 | 1 | 2 | 3
  bool sequence_parallel = false;
  bool zero3_keep_gathered = false;
  std::string backend = "auto";  // auto | nccl | mpi
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
  std::string quantize_base = "none";  // none | nf4
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

// Reads `path`, applies overrides ("a.b=value", YAML-typed), and checks every key and range.
// Relative paths in the file are resolved against the file's directory.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Same, from YAML text (tests, or a config stored in a checkpoint).
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// Layout checks that need the world size: tp*pp*dp == world, heads % tp, layers % (pp*vpp),
// global batch % (micro batch * dp). Throws UserError naming the key.
void validate_layout(const Config& cfg, int64_t world_size);

// dp = world / (tp*pp); accumulation steps = global / (micro * dp).
int64_t data_parallel_size(const Config& cfg, int64_t world_size);
int64_t accumulation_steps(const Config& cfg, int64_t world_size);

// The resolved config as YAML (every key, defaults included).
std::string to_yaml(const Config& cfg);
// One line per key: "section.key  default  meaning".
std::string describe_keys();

// Levenshtein distance, for "did you mean" hints.
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace kiln
