// Resume compatibility policy (see resume_policy.h).
#include "trainer/resume_policy.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "trainer/checkpoint.h"
#include "base/error.h"
#include "base/log.h"
#include "trainer/lr_schedule.h"

namespace fs = std::filesystem;

namespace kiln {
namespace {

std::string show(const std::string& s) { return s.empty() ? "''" : s; }
std::string show(bool b) { return b ? "true" : "false"; }
template <typename T>
std::string show(const T& v) {
  return str(v);
}

std::string show_schedule(const std::vector<MixPoint>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    out += str(i ? ", " : "", "{step: ", s[i].step, ", weights: {");
    size_t j = 0;
    for (const auto& [k, w] : s[i].weights) out += str(j++ ? ", " : "", k, ": ", w);
    out += "}}";
  }
  return out + "]";
}

std::string show_rope(const RopeScaling& r) {
  return r.type == RopeType::none ? "none" : str(r.type, " x", r.factor);
}

}  // namespace

std::vector<ResumeFinding> compare_for_resume(const Config& ckpt, int64_t ckpt_dp, const Config& now,
                                              int64_t now_dp, int64_t step) {
  std::vector<ResumeFinding> out;
  const std::string at = str("step ", step + 1);
  auto fatal = [&](const std::string& key, const auto& a, const auto& b) {
    if (a == b) return;
    out.push_back(
        {key, true,
         str(key, ": the checkpoint has ", show(a), ", the config ", show(b),
             "; a checkpoint resumes only on its own model shape (set ", key, ": ", show(a),
             ", or start a new train.run_dir, with model.init_from: ckpt:DIR for what still fits)")});
  };
  auto warn = [&](const std::string& key, const std::string& a, const std::string& b,
                  const std::string& what) {
    if (a == b) return;
    out.push_back({key, false, str("warning: resume: ", key, " changed from ", a, " to ", b, ": ", what)});
  };

  // Unusable: the model's shape (resolved values, so 0 = "derived" compares as what it means).
  const ModelConfig &m0 = ckpt.model, &m1 = now.model;
  fatal("model.arch", m0.arch, m1.arch);
  fatal("model.vocab_size", m0.vocab_size, m1.vocab_size);
  fatal("model.hidden_size", m0.hidden_size, m1.hidden_size);
  fatal("model.num_layers", m0.num_layers, m1.num_layers);
  fatal("model.num_heads", m0.num_heads, m1.num_heads);
  fatal("model.num_kv_heads", m0.kv_heads(), m1.kv_heads());
  fatal("model.ffn_hidden_size", m0.ffn_size(), m1.ffn_size());
  fatal("model.tie_embeddings", m0.tie_embeddings, m1.tie_embeddings);
  fatal("model.position", m0.position, m1.position);
  fatal("model.norm_head", m0.norm_head, m1.norm_head);
  fatal("lora.rank", ckpt.lora.rank, now.lora.rank);
  if (now.lora.rank > 0) {  // the adapters' shapes and what they are applied to
    auto list = [](const std::vector<std::string>& v) {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
      return out + "]";
    };
    fatal("lora.targets", list(ckpt.lora.targets), list(now.lora.targets));
    fatal("lora.dora", ckpt.lora.dora, now.lora.dora);
    fatal("lora.quantize_base", std::string(name_of(ckpt.lora.quantize_base)),
          std::string(name_of(now.lora.quantize_base)));
    fatal("lora.double_quant", ckpt.lora.double_quant, now.lora.double_quant);
  }

  // Allowed, with what changes.
  const int64_t g0 =
      ckpt.train.global_batch_size > 0 ? ckpt.train.global_batch_size : ckpt.train.micro_batch_size * ckpt_dp;
  const int64_t g1 =
      now.train.global_batch_size > 0 ? now.train.global_batch_size : now.train.micro_batch_size * now_dp;
  warn("data.seq_len", show(ckpt.data.seq_len), show(now.data.seq_len),
       str("from ", at, " rows are packed to ", now.data.seq_len,
           " tokens; the data position is kept as a step count, so the run goes on at row ", step * g1,
           " of the order packed at the new length (samples near that point may repeat or be skipped)"));
  warn("train.global_batch_size", show(g0), show(g1),
       str("from ", at, " each step takes ", g1,
           " rows; the data position is kept as a step count, so the run goes on at row ", step * g1,
           " of the order drawn for batch ", g1, " (the checkpoint had consumed ", step * g0, " rows)"));
  const std::string lr_now =
      str("lr at ", at, ": ", lr_at(ckpt.train, step), " before, ", lr_at(now.train, step), " now");
  warn("train.lr", show(ckpt.train.lr), show(now.train.lr), "the learning-rate schedule changes; " + lr_now);
  warn("train.min_lr", show(ckpt.train.min_lr), show(now.train.min_lr),
       "the schedule decays to the new floor; " + lr_now);
  warn("train.warmup_steps", show(ckpt.train.warmup_steps), show(now.train.warmup_steps),
       "the warmup follows the new length; " + lr_now);
  warn("train.schedule", name_of(ckpt.train.schedule), name_of(now.train.schedule),
       "the decay follows the new shape; " + lr_now);
  warn("train.steps", show(ckpt.train.steps), show(now.train.steps),
       str("the run ends at step ", now.train.steps, " and the schedule decays over it; ", lr_now));
  warn("data.mixture", show(ckpt.data.mixture), show(now.data.mixture),
       str("the rows from ", at, " are drawn from the new mixture (its sources must keep their names)"));
  warn("data.mix", name_of(ckpt.data.mix), name_of(now.data.mix),
       str("the rows from ", at, " are drawn by the new mixing rule"));
  warn("data.schedule", show_schedule(ckpt.data.schedule), show_schedule(now.data.schedule),
       str("the source weights from ", at, " follow the new schedule"));
  warn("model.max_seq_len", show(m0.max_seq_len), show(m1.max_seq_len),
       "the positions the model accepts change (weights are unchanged)");
  warn("model.rope_scaling", show_rope(m0.rope_scaling), show_rope(m1.rope_scaling),
       "rotary positions are rescaled from here on (context extension)");
  warn("model.rope_theta", show(m0.rope_theta), show(m1.rope_theta),
       "rotary frequencies change from here on");
  auto patterns = [](const TrainConfig& t) {
    std::string out = "[";
    for (size_t i = 0; i < t.trainable.size(); ++i) out += (i ? ", " : "") + t.trainable[i];
    return out + "]" + (t.trainable_new_rows_only ? " (new rows only)" : "");
  };
  warn("train.trainable", patterns(ckpt.train), patterns(now.train),
       str("the parameters that train change from ", at,
           "; those that were frozen start from the checkpoint's weights with zero Adam moments"));
  warn("train.seed", show(ckpt.train.seed), show(now.train.seed),
       str("ignored on resume: the weights come from the checkpoint and the data order follows the "
           "checkpoint's seed (",
           ckpt.train.seed, ")"));
  return out;
}

void check_resume_compatibility(const std::string& ckpt_dir, const Config& cfg, int64_t world_size) {
  const std::string path = (fs::path(ckpt_dir) / "config.yaml").string();
  std::ifstream in(path);
  if (!in) return;
  std::stringstream ss;
  ss << in.rdbuf();
  // The stored config is resolved (every model key written), so its init_from is not read again.
  Config ckpt = parse_config(ss.str(), path, {"model.init_from=none"});
  const CheckpointState st = read_checkpoint_state(ckpt_dir);
  const int64_t ckpt_dp = st.extra.value("dp", int64_t(1));
  const int64_t now_dp = data_parallel_size(cfg, world_size);
  for (const ResumeFinding& f : compare_for_resume(ckpt, ckpt_dp, cfg, now_dp, st.step)) {
    if (f.fatal) user_error(ckpt_dir, ": ", f.line);
    log0(f.line);
  }
}

}  // namespace kiln
