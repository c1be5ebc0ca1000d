// The memory plan (see memory_plan.h). Shapes: N = micro_batch_size * seq_len tokens, h hidden,
// kv = K * D key/value width, f FFN width, V vocabulary, L layers of this stage, t tensor
// parallel, b bytes per element of the compute dtype.
#include "trainer/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "models/ops/cpu_attention.h"
#include "models/ops/fused_elementwise.h"
#include "models/tp_layers.h"
#include "trainer/config.h"
#include "trainer/lora_setup.h"

namespace kiln {
namespace {

// models/ops/linear_cross_entropy.cpp: logits of at most this many bytes per chunk.
constexpr double kChunkLogitBytes = 8.0 * (1 << 20);

}  // namespace

double resident_bytes_now() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  double kb = 0;
  while (std::fgets(line, sizeof(line), f))
    if (std::strncmp(line, "VmRSS:", 6) == 0) kb = std::atof(line + 6);
  std::fclose(f);
  return kb * 1024;
}

double training_runtime_extra(int64_t world, bool cuda) {
  if (cuda) return 0;  // the CUDA figure is the caching allocator's, which holds none of these
  // Measured with bench/plan.sh (2026-12-01, LibTorch 2.11, Open MPI 4.1): a one-step run of the
  // smallest model peaks this far above an idle `kiln plan`: the intra-op pool's and the loader's
  // threads, the tensorboard writer, the tokenizer; under mpirun each peer adds MPI's
  // shared-memory segments and the launcher's bookkeeping.
  constexpr double kTrain = 40.0 * (1 << 20), kPerPeer = 12.0 * (1 << 20);
  return kTrain + (world > 1 ? kPerPeer * static_cast<double>(world - 1) : 0);
}

MemoryPlan plan_memory(const Config& cfg, int64_t world, double runtime_bytes) {
  const ModelConfig& m = cfg.model;
  const ParallelConfig& p = cfg.parallel;
  const bool gpu = cfg.train.device == DeviceChoice::cuda;
  const double b =
      cfg.train.precision == Precision::fp32 || (cfg.train.precision == Precision::automatic && !gpu) ? 4 : 2;
  const double dp = static_cast<double>(data_parallel_size(cfg, world));
  const int zero = static_cast<int>(p.zero);
  const double t = static_cast<double>(p.tp);
  const double pp = static_cast<double>(p.pp);
  MemoryPlan r;
  r.runtime = runtime_bytes;

  // ---- parameters and the optimizer's flat buffers (parallel/zero.cpp) ----------------------
  // The rank's slices exactly under tp (models/tp_layers.h), 1/pp of them per stage.
  const double P = static_cast<double>(tp_rank_parameters(m, static_cast<int>(p.tp))) / pp;
  const double h = static_cast<double>(m.hidden_size), V = static_cast<double>(m.padded_vocab());
  const double f = static_cast<double>(m.ffn_size()), kv = static_cast<double>(m.kv_heads() * m.head_dim());
  const double layer_params = (2 * h * h + 2 * h * kv + 3 * h * f) / t + 2 * h;
  const double embed_params = V * h / t;
  // The largest unit: the embedding, the head (with the final norm) or one layer.
  const double unit_params = std::max(embed_params, layer_params);
  double trained = P;       // parameters with gradients and optimizer state
  double frozen_bytes = 0;  // LoRA: the frozen base (NF4 codes and scales, or the compute dtype)
  if (lora_enabled(cfg)) {
    const LoraMemory lm = lora_memory(cfg);
    trained = static_cast<double>(lm.adapter_params) / (t * pp);
    const double packed = (lm.packed_bytes + lm.scale_bytes) / (zero >= 3 ? dp : 1);
    frozen_bytes = (packed + static_cast<double>(lm.dense_params) * b) / (t * pp);
  }
  const double kept = zero >= 1 ? trained / dp : trained;  // the rank's share of the flat state
  // Stage 3 keeps its shard in the compute dtype, an alias of the fp32 master when both are fp32
  // on one device; stages 0-2 hold every parameter.
  if (zero >= 3)
    r.params = frozen_bytes + (b == 4 && !gpu ? 0 : trained / dp * b);
  else
    r.params = frozen_bytes + trained * b;
  // master, exp_avg, exp_avg_sq and the decay mask, fp32, over the kept range; on the host under
  // optimizer_offload (not in a CUDA figure).
  r.optimizer = gpu && cfg.train.optimizer_offload == Offload::cpu ? 0 : 16 * kept;
  if (cfg.lora.rank > 0 && cfg.lora.lr_ratio != 1.0) r.optimizer += 4 * kept;  // the lr mask

  // ---- the micro-batch --------------------------------------------------------------------
  const double B = static_cast<double>(cfg.train.micro_batch_size);
  const double T = static_cast<double>(cfg.data.seq_len);
  const double N = B * T;
  const double layers = static_cast<double>(m.num_layers) / pp;
  // The loader: the step's micro-batches (all drawn before the first runs) and data.prefetch
  // batches ahead, each ids, labels, positions (int64) and loss weights (fp32).
  const double batches = static_cast<double>(accumulation_steps(cfg, world) + cfg.data.prefetch);
  r.data = batches * N * (3 * 8 + 4);

  // Saved for backward per layer (models/llama.cpp), in units of N values of b bytes: the layer
  // input x; each RMSNorm its normalised x and its output (below fp32 also an fp32 copy of x);
  // the rotated q and, grouped-query, k and v repeated to every head (else the rotated k and v):
  // the products with cos and sin keep only the tables, so the projections' outputs are freed;
  // the attention output (SDPA's flash kernels write it (B, T, H, D), so o_proj's input is a
  // view of it); the residual sum; gate, silu(gate), up and their product. Replicated regions
  // (x, the norms, the residual) are whole on each tp rank, 1/t with sequence parallel.
  // Selective recomputation keeps the same: the core's inputs q, k, v and its output (the flash
  // kernel's own saved state is the output and an (H, T) log-sum-exp).
  // On the CPU in fp32 (models/ops/fused_elementwise.h, cpu_attention.h) the fused RMSNorm keeps
  // only its output (the next projection's input) and one fp32 value per row; SwiGLU keeps gate
  // and up, not silu(gate); and a RoPE model's attention (packed rows, and dense rows up to 1024
  // tokens) runs through the varlen kernel, which keeps k and v unrepeated and an (N, H) fp32
  // log-sum-exp. On CUDA, packed rows in fp16/bf16 take the varlen flash kernel, which keeps the
  // same. (The conditions mirror LlamaImpl::attention_context(), which decides per batch.)
  const bool cpu_fused = !gpu && b == 4 && fused_elementwise_on(c10::Device(c10::kCPU), at::kFloat);
  const bool cpu_kernel = !gpu && b == 4 && m.position == Position::rope &&
                          (cfg.data.packing || cfg.data.seq_len <= kCpuAttentionDenseMaxLen) &&
                          cpu_varlen_attention_supported(c10::Device(c10::kCPU), at::kFloat);
  const bool varlen = cpu_kernel || (gpu && b == 2 && cfg.data.packing && m.position == Position::rope);
  const bool repeats = m.kv_heads() != m.num_heads && !varlen;
  // An fp32 copy counts as two b=2 values.
  const double norm_vals = cpu_fused ? h : 2 * h + (b < 4 ? 2 * h : 0);
  auto per_layer = [&](bool sp) {
    const double rep = sp ? 1 / t : 1;
    const double replicated = (h + 2 * norm_vals + h) * rep;
    const double qkv = (h + (repeats ? 2 * h : 2 * kv)) / t;
    const double out = h / t;
    const double lse = varlen ? static_cast<double>(m.num_heads) / t * 4 / b : 0;
    const double mlp = (cpu_fused ? 3 : 4) * f / t;
    return N * b * (replicated + qkv + out + lse + mlp);
  };
  auto activations = [&](bool sp) {
    const Checkpointing mode = cfg.train.activation_checkpointing;
    // Full checkpointing and ZeRO-3's per-unit recomputation keep only each layer's input.
    if (mode == Checkpointing::full || zero >= 3) return layers * N * h * b * (sp ? 1 / t : 1);
    return layers * per_layer(sp);
  };
  r.activations = activations(p.sequence_parallel);
  r.activations_sp = activations(true);
  r.activations_no_sp = activations(false);
  // One layer's backward: what it recomputes (full, ZeRO-3) and the gradients of its tensors:
  // the input gradient, the FFN's three, q/k/v's and the attention's.
  const bool recomputes = cfg.train.activation_checkpointing == Checkpointing::full || zero >= 3;
  r.layer_backward = (recomputes ? per_layer(p.sequence_parallel) : 0) + N * b * (3 * f / t + 4 * h);

  // Attention masks outside the varlen kernels (models/llama.cpp attention_context()). Packed rows
  // attend through a (B, 1, T, T) bool mask held through forward and backward; SDPA's CPU kernel
  // turns it into a float mask of the query dtype in every layer and keeps that copy for its
  // backward, unless the core is recomputed (selective, full, ZeRO-3: one layer's copy at a time).
  // ALiBi's mask is already float: (1 or B, H, T, T) fp32 for every head (tp ranks narrow it to
  // theirs), copied per layer only when the compute dtype is not fp32.
  const bool packed = cfg.data.packing && !varlen;
  const bool core_saved = cfg.train.activation_checkpointing == Checkpointing::none && zero < 3;
  const double copies = core_saved ? layers : 1;
  if (m.position == Position::alibi) {
    const double bias = (cfg.data.packing ? B : 1) * static_cast<double>(m.num_heads) * T * T;
    r.attention_mask = (cfg.data.packing ? B * T * T : 0) + bias * 4 + (b < 4 ? copies * bias / t * b : 0);
  } else if (packed) {
    r.attention_mask = B * T * T + copies * B * T * T * b;
  }

  // The head and loss: the chunked op computes the head's gradients during forward and holds them
  // (the hidden-state gradient (N, h) and the head weight's (V, h), which becomes the parameter's
  // gradient), plus a chunk's logits, their softmax gradient and its copy.
  // (The weight's gradient is made even when the head is frozen, as under LoRA, and dropped in
  // backward.) Tensor parallel: the vocab-parallel loss keeps the rank's (N, V/t) fp32 logits and
  // their gradient instead of chunks.
  const double chunk = std::max(kChunkLogitBytes, 64 * 4 * V);
  r.loss = N * h * b + V * h / t * b + (t > 1 ? 2 * N * V / t * 4 : 3 * chunk);
  // The final norm's saved tensors and the last layer's output.
  const double head_acts = N * h * b * (zero >= 3 ? 1 : 1 + 2);

  // ---- gradients and the reduce (parallel/zero.cpp) -----------------------------------------
  // Stages 0-1: every parameter's gradient until the step. Stage 2 adds each gradient, as autograd
  // makes it, into its unit's flat fp32 gradient and frees it; a complete unit is reduce-scattered
  // into the rank's 1/dp, bucket by bucket (a bucket gathers its piece of every rank's partition),
  // so a unit's flat gradient, one parameter's gradient and a bucket live at a time. (Before the
  // stage-2 reduce-scatter during backward, every gradient lived until the step as in stage 1.)
  // Stage 3 reduce-scatters each unit's gradients after its backward.
  const double bucket = static_cast<double>(p.bucket_mb) * (1 << 20);
  const double all_grads = trained * b;
  r.grad_flat = 4 * kept;
  if (zero == 2 && dp > 1) {
    r.grads = std::min(all_grads, unit_params * (4 + b) + std::min(bucket * dp, 4 * unit_params));
  } else if (zero >= 3) {
    r.grads = std::min(all_grads, unit_params * b);
  } else {
    r.grads = all_grads;
  }
  // ZeRO-3: the unit in use and the one prefetched, in the compute dtype, and the unit's flat
  // gradient with the rank's piece of it.
  if (zero >= 3) r.gathered = unit_params * b * 2 + unit_params * b * (1 + 1 / dp);

  // ---- phases ---------------------------------------------------------------------------------
  const double held = r.runtime + r.params + r.optimizer + r.data;
  // Gradients at forward's end: only the head's (counted in loss); during backward they grow
  // while the activations shrink, so the backward's peak is at one end or the other.
  r.forward_end = held + r.activations + head_acts + r.attention_mask + r.loss + r.gathered;
  const double grads_in_backward = zero >= 2 ? r.grads + (zero >= 3 || dp > 1 ? r.grad_flat : 0) : 0;
  r.backward =
      held + r.activations + r.attention_mask + r.loss + r.layer_backward + r.gathered + grads_in_backward;
  const double flat_unit = zero < 3 && dp > 1 ? 4 * unit_params : 0;  // reduce_group's padded flat copy
  r.reduce = held + r.grads + r.grad_flat + flat_unit;      // ZeRO-3: every unit released by now
  r.peak = r.forward_end, r.peak_phase = "forward";
  if (r.backward > r.peak) r.peak = r.backward, r.peak_phase = "backward";
  if (r.reduce > r.peak) r.peak = r.reduce, r.peak_phase = "gradient reduce";
  return r;
}

}  // namespace kiln
