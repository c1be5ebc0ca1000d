// YAML -> Config: a table of keys (path, help, reader, printer) drives parsing, validation,
// printing of the resolved config and `kiln plan --explain`. Unknown keys, wrong types and
// out-of-range values are UserErrors naming the file:line (or the --set override) and the key.
#include "trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "base/error.h"
#include "data/chat_template.h"
#include "data/vocab_check.h"
#include "models/hf.h"

namespace fs = std::filesystem;

namespace kiln {
namespace {

// Where a value came from, for messages.
struct Ctx {
  std::string file;                     // config file name
  std::string base_dir;                 // its directory, for relative paths
  std::vector<std::string> overridden;  // key paths given with --set
};

bool from_set(const Ctx& ctx, const std::string& key) {
  for (const auto& p : ctx.overridden)
    if (key == p || key.compare(0, p.size() + 1, p + ".") == 0) return true;
  return false;
}

std::string where(const Ctx& ctx, const YAML::Node& node, const std::string& key) {
  if (from_set(ctx, key) || node.Mark().line < 0) return str("--set ", key);
  return str(ctx.file, ":", node.Mark().line + 1, ": ", key);
}

struct Key {
  std::string path;  // "train.lr"
  std::string meaning;
  std::function<void(const YAML::Node&, const Ctx&)> read;
  std::function<YAML::Node()> show;
};

std::string scalar_text(const YAML::Node& n) {
  if (n.IsScalar()) return n.Scalar();
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "nothing";
}

int64_t as_int(const YAML::Node& n, const Ctx& ctx, const std::string& key) {
  if (n.IsScalar()) {
    const std::string& s = n.Scalar();
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (!s.empty() && end && *end == '\0' && errno == 0) return v;
    // 1e3 style integers
    double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && end && *end == '\0' && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18)
      return static_cast<int64_t>(d);
  }
  user_error(where(ctx, n, key), ": expected an integer, got '", scalar_text(n), "'");
}

double as_double(const YAML::Node& n, const Ctx& ctx, const std::string& key) {
  if (n.IsScalar()) {
    const std::string& s = n.Scalar();
    char* end = nullptr;
    double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && end && *end == '\0' && std::isfinite(d)) return d;
  }
  user_error(where(ctx, n, key), ": expected a number, got '", scalar_text(n), "'");
}

bool as_bool(const YAML::Node& n, const Ctx& ctx, const std::string& key) {
  if (n.IsScalar()) {
    std::string s = n.Scalar();
    std::transform(s.begin(), s.end(), s.begin(), ::tolower);
    if (s == "true" || s == "yes" || s == "on") return true;
    if (s == "false" || s == "no" || s == "off") return false;
  }
  user_error(where(ctx, n, key), ": expected true or false, got '", scalar_text(n), "'");
}

std::string as_string(const YAML::Node& n, const Ctx& ctx, const std::string& key) {
  if (n.IsScalar()) return n.Scalar();
  if (n.IsNull()) return "";
  user_error(where(ctx, n, key), ": expected a string, got ", scalar_text(n));
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

// Relative paths written in the file are relative to the file; --set paths to the cwd.
std::string resolve_path(const std::string& p, const std::string& key, const YAML::Node& n, const Ctx& ctx) {
  if (p.empty() || fs::path(p).is_absolute() || n.Mark().line < 0 || from_set(ctx, key)) return p;
  // Absolute, so that the config stored in the run dir and in every checkpoint still names
  // the same files when read from there (export, eval of a checkpoint).
  return fs::absolute(fs::path(ctx.base_dir) / p).lexically_normal().string();
}

template <typename T>
YAML::Node show_value(const T& v) {
  return YAML::Node(v);
}

// Doubles in the shortest form that reads back exactly (0.0003, not 0.00029999999999999997).
std::string shortest(double v) {
  char buf[64];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

template <>
YAML::Node show_value(const double& v) {
  return YAML::Node(shortest(v));
}

template <>
YAML::Node show_value(const std::vector<double>& v) {
  YAML::Node n(YAML::NodeType::Sequence);
  for (double x : v) n.push_back(shortest(x));
  return n;
}

// Binders: each returns a Key for one typed field.
Key int_key(std::string path, int64_t* v, int64_t lo, int64_t hi, std::string meaning) {
  return {path, meaning,
          [=](const YAML::Node& n, const Ctx& c) {
            int64_t x = as_int(n, c, path);
            if (x < lo || x > hi)
              user_error(where(c, n, path), ": ", x, " is out of range; valid: ", lo, " .. ",
                         hi == std::numeric_limits<int64_t>::max() ? std::string("any") : str(hi));
            *v = x;
          },
          [=] { return show_value(*v); }};
}

Key num_key(std::string path, double* v, double lo, double hi, std::string meaning, bool lo_open = false) {
  return {path, meaning,
          [=](const YAML::Node& n, const Ctx& c) {
            double x = as_double(n, c, path);
            bool bad = lo_open ? !(x > lo) : x < lo;
            if (bad || x > hi)
              user_error(where(c, n, path), ": ", x, " is out of range; valid: ", lo_open ? "> " : ">= ", lo,
                         hi < 1e300 ? str(" and <= ", hi) : std::string());
            *v = x;
          },
          [=] { return show_value(*v); }};
}

Key bool_key(std::string path, bool* v, std::string meaning) {
  return {path, meaning, [=](const YAML::Node& n, const Ctx& c) { *v = as_bool(n, c, path); },
          [=] { return show_value(*v); }};
}

Key choice_key(std::string path, std::string* v, std::vector<std::string> choices, std::string meaning) {
  return {path, meaning + " (" + join(choices, " | ") + ")",
          [=](const YAML::Node& n, const Ctx& c) {
            std::string x = as_string(n, c, path);
            if (std::find(choices.begin(), choices.end(), x) == choices.end())
              user_error(where(c, n, path), ": '", x, "' is not one of ", join(choices, " | "));
            *v = x;
          },
          [=] { return show_value(*v); }};
}

// An enum key: parsed once through its ChoiceNames (base/choice.h), so no code compares strings.
template <class E>
Key enum_key(std::string path, E* v, std::string meaning) {
  const std::vector<std::string> choices = choice_names<E>();
  return {path, meaning + " (" + join(choices, " | ") + ")",
          [=](const YAML::Node& n, const Ctx& c) {
            std::string x = as_string(n, c, path);
            if (!parse_choice(x, v))
              user_error(where(c, n, path), ": '", x, "' is not one of ", join(choices, " | "));
          },
          [=] { return show_value(std::string(name_of(*v))); }};
}

Key string_key(std::string path, std::string* v, std::string meaning, bool is_path = false) {
  return {path, meaning,
          [=](const YAML::Node& n, const Ctx& c) {
            std::string x = as_string(n, c, path);
            *v = is_path ? resolve_path(x, path, n, c) : x;
          },
          [=] { return show_value(*v); }};
}

// "none" | "hf:DIR" | "ckpt:DIR" | "peft:DIR" with DIR resolved.
Key source_key(std::string path, std::string* v, std::vector<std::string> prefixes, std::string meaning) {
  return {path, meaning,
          [=](const YAML::Node& n, const Ctx& c) {
            std::string x = as_string(n, c, path);
            if (x.empty() || x == "none") {
              *v = x;
              return;
            }
            auto colon = x.find(':');
            std::string prefix = colon == std::string::npos ? "" : x.substr(0, colon);
            if (std::find(prefixes.begin(), prefixes.end(), prefix) == prefixes.end())
              user_error(where(c, n, path), ": '", x, "' must be none or one of ", join(prefixes, ":DIR | "),
                         ":DIR");
            *v = prefix + ":" + resolve_path(x.substr(colon + 1), path, n, c);
          },
          [=] { return show_value(*v); }};
}

Key string_list_key(std::string path, std::vector<std::string>* v, std::string meaning) {
  return {path, meaning,
          [=](const YAML::Node& n, const Ctx& c) {
            v->clear();
            if (n.IsScalar()) {
              v->push_back(n.Scalar());
              return;
            }
            if (!n.IsSequence()) user_error(where(c, n, path), ": expected a list of names");
            for (const auto& e : n) v->push_back(as_string(e, c, path));
          },
          [=] { return show_value(*v); }};
}

std::vector<Key> schema(Config& cfg) {
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  ModelConfig& m = cfg.model;
  DataConfig& d = cfg.data;
  TrainConfig& t = cfg.train;
  ParallelConfig& p = cfg.parallel;
  CheckpointConfig& k = cfg.checkpoint;
  LoraConfig& l = cfg.lora;
  GenerateConfig& g = cfg.generate;
  std::vector<Key> keys = {
      enum_key("model.arch", &m.arch, "architecture"),
      int_key("model.vocab_size", &m.vocab_size, 1, kMax,
              "vocabulary size (at least the tokenizer's; larger than init_from's grows it)"),
      int_key("model.hidden_size", &m.hidden_size, 1, kMax, "model width"),
      int_key("model.num_layers", &m.num_layers, 1, kMax, "decoder layers"),
      int_key("model.num_heads", &m.num_heads, 1, kMax, "attention heads"),
      int_key("model.num_kv_heads", &m.num_kv_heads, 0, kMax,
              "key/value heads, 0 = num_heads (GQA when fewer)"),
      int_key("model.ffn_hidden_size", &m.ffn_hidden_size, 0, kMax,
              "SwiGLU width, 0 = 8h/3 rounded up to 64"),
      int_key("model.max_seq_len", &m.max_seq_len, 1, kMax, "longest sequence the model serves"),
      num_key("model.rope_theta", &m.rope_theta, 0, 1e300, "RoPE base", true),
      enum_key("model.rope_scaling.type", &m.rope_scaling.type, "RoPE scaling for context extension"),
      num_key("model.rope_scaling.factor", &m.rope_scaling.factor, 1, 1e6,
              "context extension factor (4k->16k: 4)"),
      int_key("model.rope_scaling.original_max_seq_len", &m.rope_scaling.original_max_seq_len, 0, kMax,
              "pretraining context for dynamic/llama3, 0 = model.max_seq_len"),
      num_key("model.rope_scaling.low_freq_factor", &m.rope_scaling.low_freq_factor, 0, 1e6, "llama3 scaling",
              true),
      num_key("model.rope_scaling.high_freq_factor", &m.rope_scaling.high_freq_factor, 0, 1e6,
              "llama3 scaling", true),
      enum_key("model.position", &m.position, "position encoding"),
      bool_key("model.norm_head", &m.norm_head,
               "Baichuan2 NormHead: logits from the head's L2-normalised rows, every forward"),
      int_key("model.vocab_pad_to", &m.vocab_pad_to, 1, 1 << 20,
              "embedding/head rows padded to a multiple of this; padding is never predicted"),
      choice_key(
          "model.vocab_init", &m.vocab_init, {"mean", "mean_cov", "zeros"},
          "rows added when model.vocab_size exceeds init_from's: mean of old rows, + covariance noise"),
      bool_key("model.tie_embeddings", &m.tie_embeddings, "share input embedding and LM head"),
      num_key("model.norm_eps", &m.norm_eps, 0, 1, "RMSNorm epsilon", true),
      num_key("model.init_std", &m.init_std, 0, 10, "std of the random init", true),
      source_key("model.init_from", &m.init_from, {"hf", "ckpt"},
                 "none | hf:DIR | ckpt:DIR: initial weights"),
      string_key("tokenizer", &cfg.tokenizer, "sentencepiece model file", true),
      string_key("data.mixture", &d.mixture, "data.json {path: weight}, a .jsonl, or a prepared dir", true),
      enum_key("data.mix", &d.mix, "how data.json weights are applied"),
      {"data.schedule", "list of {step, weights: {path: weight}}, linear between points",
       [&d](const YAML::Node& n, const Ctx& c) {
         d.schedule.clear();
         if (!n.IsSequence())
           user_error(where(c, n, "data.schedule"), ": expected a list of {step, weights}");
         for (const auto& e : n) {
           if (!e.IsMap() || !e["step"] || !e["weights"] || !e["weights"].IsMap())
             user_error(where(c, e, "data.schedule"),
                        ": each point needs step: N and weights: {path: weight}");
           for (const auto& kv : e)
             if (kv.first.Scalar() != "step" && kv.first.Scalar() != "weights")
               user_error(where(c, kv.first, "data.schedule." + kv.first.Scalar()),
                          ": unknown key; valid: step, weights");
           MixPoint mp;
           mp.step = as_int(e["step"], c, "data.schedule.step");
           if (mp.step < 0) user_error(where(c, e["step"], "data.schedule.step"), ": must be >= 0");
           if (!d.schedule.empty() && mp.step <= d.schedule.back().step)
             user_error(where(c, e["step"], "data.schedule.step"), ": steps must increase");
           for (const auto& w : e["weights"]) {
             double x = as_double(w.second, c, "data.schedule.weights." + w.first.Scalar());
             if (x < 0)
               user_error(where(c, w.second, "data.schedule.weights." + w.first.Scalar()),
                          ": weight must be >= 0");
             mp.weights[w.first.Scalar()] = x;
           }
           d.schedule.push_back(mp);
         }
       },
       [&d] {
         YAML::Node n(YAML::NodeType::Sequence);
         for (const auto& mp : d.schedule) {
           YAML::Node e;
           e["step"] = mp.step;
           for (const auto& [k, w] : mp.weights) e["weights"][k] = shortest(w);
           n.push_back(e);
         }
         return n;
       }},
      choice_key("data.format", &d.format, {"auto", "text", "alpaca", "telechat", "firefly", "messages"},
                 "JSONL record format"),
      string_key("data.template", &d.chat_template,
                 "chat template: firefly | xuanyuan | llama2 | chatml | telechat | custom"),
      {"data.custom_template", "template: custom — map of template strings",
       [&d](const YAML::Node& n, const Ctx& c) {
         if (!n.IsMap()) user_error(where(c, n, "data.custom_template"), ": expected a mapping of strings");
         d.custom_template.clear();
         for (const auto& kv : n)
           d.custom_template[kv.first.Scalar()] =
               as_string(kv.second, c, "data.custom_template." + kv.first.Scalar());
       },
       [&d] {
         YAML::Node n(YAML::NodeType::Map);
         for (const auto& [k, v] : d.custom_template) n[k] = v;
         return n;
       }},
      choice_key("data.loss", &d.loss, {"all_tokens", "all_turns", "last_turn"},
                 "which tokens carry loss in SFT"),
      enum_key("data.loss_average", &d.loss_average,
               "mean over trained tokens of the global batch, or per sample"),
      int_key("data.seq_len", &d.seq_len, 2, kMax, "tokens per training sequence"),
      bool_key("data.packing", &d.packing, "pack whole samples into sequences (no cross-attention)"),
      choice_key("data.overlong", &d.overlong, {"auto", "split", "truncate", "drop"},
                 "samples over seq_len: auto = split text, truncate SFT"),
      bool_key("data.redraw_each_epoch", &d.redraw_each_epoch,
               "mix telechat: draw a new pool every epoch (TeleChat: one pool)"),
      string_key("data.eval", &d.eval, "eval data (same forms as mixture)", true),
      int_key("data.eval_samples", &d.eval_samples, 0, kMax, "eval samples used, 0 = all"),
      int_key("data.workers", &d.workers, 1, 256, "tokenizer threads for prep"),
      bool_key("data.skip_bad_lines", &d.skip_bad_lines, "count and skip malformed lines instead of failing"),
      int_key("data.prefetch", &d.prefetch, 0, 64, "batches prepared ahead by the loader"),
      string_key("train.run_dir", &t.run_dir, "directory for logs, metrics.jsonl and checkpoints"),
      int_key("train.seed", &t.seed, 0, kMax, "seed for init, data order and dropout"),
      int_key("train.steps", &t.steps, 0, kMax, "optimizer steps (0: save the initial weights as step 0)"),
      int_key("train.micro_batch_size", &t.micro_batch_size, 1, kMax, "sequences per forward on each rank"),
      int_key("train.global_batch_size", &t.global_batch_size, 0, kMax,
              "sequences per step, 0 = micro_batch_size * dp"),
      num_key("train.lr", &t.lr, 0, 10, "peak learning rate", true),
      num_key("train.min_lr", &t.min_lr, 0, 10, "final learning rate of cosine/linear decay"),
      int_key("train.warmup_steps", &t.warmup_steps, 0, kMax, "linear warmup steps"),
      enum_key("train.schedule", &t.schedule, "learning-rate schedule after warmup"),
      num_key("train.weight_decay", &t.weight_decay, 0, 10, "AdamW decoupled weight decay (matrices only)"),
      {"train.betas", "AdamW betas [beta1, beta2]",
       [&t](const YAML::Node& n, const Ctx& c) {
         if (!n.IsSequence() || n.size() != 2)
           user_error(where(c, n, "train.betas"), ": expected [beta1, beta2]");
         for (int i = 0; i < 2; ++i) {
           double b = as_double(n[i], c, "train.betas");
           if (b < 0 || b >= 1)
             user_error(where(c, n, "train.betas"), ": ", b, " is out of range; valid: 0 <= beta < 1");
           t.betas[i] = b;
         }
       },
       [&t] { return show_value(t.betas); }},
      num_key("train.eps", &t.eps, 0, 1, "AdamW epsilon", true),
      num_key("train.grad_clip", &t.grad_clip, 0, 1e30, "global gradient-norm clip, 0 = off"),
      enum_key("train.precision", &t.precision, "compute precision (master weights are fp32)"),
      enum_key("train.activation_checkpointing", &t.activation_checkpointing,
               "recompute activations in backward"),
      string_key("train.resume", &t.resume, "auto (latest checkpoint in run_dir) | never | DIR"),
      int_key("train.log_every", &t.log_every, 1, kMax, "steps between log lines"),
      int_key("train.eval_every", &t.eval_every, 0, kMax, "steps between evals on data.eval, 0 = never"),
      int_key("train.max_skipped_steps", &t.max_skipped_steps, 0, kMax,
              "fp16 overflow steps in a row before stopping"),
      enum_key("train.optimizer_offload", &t.optimizer_offload, "keep optimizer state on the host"),
      enum_key("train.device", &t.device, "where to compute"),
      int_key("train.threads", &t.threads, 0, 1024, "CPU threads, 0 = torch default"),
      string_list_key("train.trainable", &t.trainable,
                      "parameter-name patterns that train (substring, or glob with *); others frozen"),
      bool_key("train.trainable_new_rows_only", &t.trainable_new_rows_only,
               "embed_tokens/lm_head train only the rows beyond model.init_from's vocabulary"),
      string_key("train.tensorboard", &t.tensorboard,
                 "TensorBoard event files: auto (RUN_DIR/tb) | none | DIR"),
      int_key("parallel.tp", &p.tp, 1, 1024, "tensor-parallel size"),
      int_key("parallel.pp", &p.pp, 1, 1024, "pipeline-parallel size"),
      int_key("parallel.virtual_stages", &p.virtual_stages, 1, 1024, "interleaved chunks per pipeline rank"),
      int_key("parallel.zero", &p.zero, 0, 3, "ZeRO stage over data parallel"),
      bool_key("parallel.sequence_parallel", &p.sequence_parallel, "shard norms/dropout activations over tp"),
      bool_key("parallel.zero3_keep_gathered", &p.zero3_keep_gathered,
               "ZeRO-3: keep gathered params between forward and backward"),
      enum_key("parallel.backend", &p.backend, "communication backend"),
      num_key("parallel.timeout_s", &p.timeout_s, 0, 1e9, "seconds before a stuck collective aborts the job",
              true),
      int_key("parallel.bucket_mb", &p.bucket_mb, 1, 1 << 20, "gradient bucket size in MiB"),
      int_key("checkpoint.every", &k.every, 0, kMax, "steps between checkpoints, 0 = only at the end"),
      int_key("checkpoint.keep_last", &k.keep_last, 1, kMax, "checkpoints kept (older ones deleted)"),
      int_key("lora.rank", &l.rank, 0, 4096, "LoRA rank, 0 = off"),
      num_key("lora.alpha", &l.alpha, 0, 1e6, "LoRA alpha", true),
      num_key("lora.dropout", &l.dropout, 0, 0.999, "LoRA dropout"),
      string_list_key("lora.targets", &l.targets, "module names (q_proj, ...) or all_linear"),
      bool_key("lora.rslora", &l.rslora, "scale by alpha/sqrt(r) instead of alpha/r"),
      num_key("lora.lr_ratio", &l.lr_ratio, 0, 1e6, "LoRA+: learning rate of B (and DoRA magnitude) over A's",
              true),
      bool_key("lora.dora", &l.dora, "DoRA: learn a magnitude per output row (PEFT's use_dora)"),
      enum_key("lora.quantize_base", &l.quantize_base, "QLoRA base quantization"),
      bool_key("lora.double_quant", &l.double_quant, "QLoRA: quantize the quantization constants"),
      source_key("lora.init_from", &l.init_from, {"peft"}, "peft:DIR adapter to start from"),
      int_key("generate.max_new_tokens", &g.max_new_tokens, 1, kMax, "tokens generated"),
      num_key("generate.temperature", &g.temperature, 0, 100, "0 = greedy"),
      int_key("generate.top_k", &g.top_k, 0, kMax, "sample from the k most likely, 0 = all"),
      num_key("generate.top_p", &g.top_p, 0, 1, "nucleus sampling mass", true),
  };
  return keys;
}

// The valid key closest to a mistyped one. Names users bring from Hugging Face, DeepSpeed and
// Megatron (learning_rate, max_steps, ...) count as spellings of kiln's keys.
std::string closest_key(const std::string& path, const std::vector<Key>& keys) {
  static const std::pair<const char*, const char*> aliases[] = {
      {"train.learning_rate", "train.lr"},
      {"train.max_steps", "train.steps"},
      {"train.train_iters", "train.steps"},
      {"train.lr_scheduler_type", "train.schedule"},
      {"train.lr_decay_style", "train.schedule"},
      {"train.warmup", "train.warmup_steps"},
      {"train.per_device_train_batch_size", "train.micro_batch_size"},
      {"train.max_grad_norm", "train.grad_clip"},
      {"train.clip_grad", "train.grad_clip"},
      {"train.output_dir", "train.run_dir"},
      {"train.gradient_checkpointing", "train.activation_checkpointing"},
      {"train.save", "train.run_dir"},
      {"train.bf16", "train.precision"},
      {"train.fp16", "train.precision"},
      {"parallel.tensor_model_parallel_size", "parallel.tp"},
      {"parallel.pipeline_model_parallel_size", "parallel.pp"},
      {"parallel.zero_stage", "parallel.zero"},
      {"model.num_hidden_layers", "model.num_layers"},
      {"model.num_attention_heads", "model.num_heads"},
      {"model.num_key_value_heads", "model.num_kv_heads"},
      {"model.intermediate_size", "model.ffn_hidden_size"},
      {"model.max_position_embeddings", "model.max_seq_len"},
      {"model.rms_norm_eps", "model.norm_eps"},
      {"model.tie_word_embeddings", "model.tie_embeddings"},
      {"data.max_seq_length", "data.seq_len"},
      {"data.cutoff_len", "data.seq_len"},
      {"lora.lora_rank", "lora.rank"},
      {"lora.r", "lora.rank"},
      {"lora.lora_alpha", "lora.alpha"},
      {"lora.lora_dropout", "lora.dropout"},
      {"lora.target_modules", "lora.targets"},
      {"lora.use_rslora", "lora.rslora"},
      {"lora.use_dora", "lora.dora"},
      {"lora.loraplus_lr_ratio", "lora.lr_ratio"},
      {"checkpoint.save_steps", "checkpoint.every"},
      {"checkpoint.save_total_limit", "checkpoint.keep_last"}};
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  auto consider = [&](const std::string& spelling, const std::string& key) {
    size_t d = edit_distance(path, spelling);
    if (d < best_d) best_d = d, best = key;
  };
  for (const auto& k : keys) consider(k.path, k.path);
  for (const auto& [alias, key] : aliases) consider(alias, key);
  return best;
}

// Flattens a YAML mapping into (dotted key, node) leaves, stopping at keys the schema treats
// as one value (lists, template maps).
void walk(const YAML::Node& node, const std::string& prefix, const std::vector<Key>& keys, const Ctx& ctx,
          std::vector<std::pair<std::string, YAML::Node>>& leaves) {
  for (const auto& kv : node) {
    std::string name = kv.first.as<std::string>();
    std::string path = prefix.empty() ? name : prefix + "." + name;
    bool is_key = std::any_of(keys.begin(), keys.end(), [&](const Key& k) { return k.path == path; });
    bool is_section = std::any_of(keys.begin(), keys.end(), [&](const Key& k) {
      return k.path.compare(0, path.size() + 1, path + ".") == 0;
    });
    if (is_key) {
      leaves.emplace_back(path, kv.second);
    } else if (is_section) {
      if (!kv.second.IsMap())
        user_error(where(ctx, kv.second, path), ": expected a mapping of ", path, ".* keys");
      walk(kv.second, path, keys, ctx, leaves);
    } else {
      user_error(where(ctx, kv.first, path), ": unknown key; did you mean '", closest_key(path, keys), "'?");
    }
  }
}

// Sets root[parts[0]][parts[1]]... = value, creating sections. Each child is assigned back to
// its parent, since a yaml-cpp node fetched for a missing key is not attached until then.
void set_path(YAML::Node& node, const std::vector<std::string>& parts, size_t i, const YAML::Node& value,
              const std::string& what) {
  if (i + 1 == parts.size()) {
    node[parts[i]] = value;
    return;
  }
  YAML::Node child = node[parts[i]];
  if (!child || child.IsNull()) child = YAML::Node(YAML::NodeType::Map);
  if (!child.IsMap()) user_error(what, ": '", parts[i], "' is not a section");
  set_path(child, parts, i + 1, value, what);
  node[parts[i]] = child;
}

void apply_override(YAML::Node& root, const std::string& spec) {
  auto eq = spec.find('=');
  if (eq == std::string::npos || eq == 0) user_error("--set ", spec, ": expected key.path=value");
  std::string path = spec.substr(0, eq), value = spec.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
  YAML::Node parsed;
  try {
    parsed = YAML::Load(value);
  } catch (const YAML::Exception&) {
    parsed = YAML::Node(value);
  }
  set_path(root, parts, 0, parsed, "--set " + path);
}

}  // namespace

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  Config cfg;
  cfg.source = source_name;
  Ctx ctx{source_name, fs::path(source_name).parent_path().string()};
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    user_error(source_name, ":", e.mark.line + 1, ": invalid YAML: ", e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) user_error(source_name, ": expected a mapping of sections (model, data, train, ...)");
  for (const auto& o : overrides) {
    apply_override(root, o);
    ctx.overridden.push_back(o.substr(0, o.find('=')));
  }

  std::vector<Key> keys = schema(cfg);
  std::vector<std::pair<std::string, YAML::Node>> leaves;
  walk(root, "", keys, ctx, leaves);
  for (const auto& [path, node] : leaves)
    for (const auto& k : keys)
      if (k.path == path) k.read(node, ctx);

  // model.init_from: hf:DIR takes the model's shape from DIR/config.json; model.* keys written
  // in the YAML (or --set) still win, e.g. rope_scaling for a 4k -> 16k context extension.
  if (cfg.model.init_from.rfind("hf:", 0) == 0) {
    Config hf;
    hf.model = read_hf_config(cfg.model.init_from.substr(3));
    std::vector<Key> hf_keys = schema(hf);
    for (size_t i = 0; i < keys.size(); ++i) {
      const std::string& path = keys[i].path;
      if (path.rfind("model.", 0) != 0 || path == "model.init_from") continue;
      bool given = std::any_of(leaves.begin(), leaves.end(), [&](const auto& l) { return l.first == path; });
      if (!given) keys[i].read(hf_keys[i].show(), ctx);
    }
  }

  // Cross-key checks that need no world size.
  const ModelConfig& m = cfg.model;
  if (m.hidden_size % m.num_heads != 0)
    user_error(source_name, ": model.hidden_size (", m.hidden_size,
               ") must be divisible by model.num_heads (", m.num_heads, ")");
  if (m.num_heads % m.kv_heads() != 0)
    user_error(source_name, ": model.num_heads (", m.num_heads, ") must be divisible by model.num_kv_heads (",
               m.kv_heads(), ")");
  if (m.position == Position::rope && m.head_dim() % 2 != 0)
    user_error(source_name, ": model.hidden_size / model.num_heads must be even for RoPE (is ", m.head_dim(),
               ")");
  if (m.norm_head && m.tie_embeddings)
    user_error(source_name, ": model.norm_head needs an untied head (model.tie_embeddings: false)");
  if (cfg.data.seq_len > m.max_seq_len)
    user_error(source_name, ": data.seq_len (", cfg.data.seq_len, ") exceeds model.max_seq_len (",
               m.max_seq_len, ")");
  if (cfg.train.min_lr > cfg.train.lr)
    user_error(source_name, ": train.min_lr (", cfg.train.min_lr, ") must not exceed train.lr (",
               cfg.train.lr, ")");
  if (cfg.data.chat_template == "custom" && cfg.data.custom_template.empty())
    user_error(source_name, ": data.template: custom needs data.custom_template");
  return cfg;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) user_error(path, ": cannot read config file (", std::strerror(errno), ")");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    if (YAML::Load(ss.str()).IsNull())
      user_error(path, ": empty config file (expected the sections model, tokenizer, data, train, ...)");
  } catch (const YAML::ParserException&) {
    // parse_config reports it with its line
  }
  return parse_config(ss.str(), path, overrides);
}

std::string to_yaml(const Config& cfg) {
  Config copy = cfg;
  std::vector<Key> keys = schema(copy);
  YAML::Node root;
  for (const auto& k : keys) {
    std::vector<std::string> parts;
    std::stringstream ss(k.path);
    for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
    set_path(root, parts, 0, k.show(), k.path);
  }
  YAML::Emitter out;
  out << root;
  return std::string(out.c_str()) + "\n";
}

std::string describe_keys() {
  Config cfg;
  std::vector<Key> keys = schema(cfg);
  std::ostringstream os;
  for (const auto& k : keys) {
    YAML::Emitter e;
    e << YAML::Flow << k.show();
    std::string def = e.c_str();
    if (def.empty()) def = "\"\"";
    os << k.path << std::string(k.path.size() < 40 ? 40 - k.path.size() : 1, ' ') << def
       << std::string(def.size() < 14 ? 14 - def.size() : 1, ' ') << k.meaning << "\n";
  }
  return os.str();
}

}  // namespace kiln
