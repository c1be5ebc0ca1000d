// The Llama-family decoder (see llama.h). Shapes: B batch, T sequence, h hidden, H heads,
// K key/value heads, D head dim, V vocabulary.
#include "models/llama.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <typeinfo>

#include "models/lm_head.h"
#include "models/ops/cpu_attention.h"
#include "models/ops/fused_elementwise.h"
#include "models/ops/linear_cross_entropy.h"
#include "models/ops/varlen_attention.h"
#include "models/recompute.h"
#include "models/weight_source.h"
#include "models/tp_layers.h"
#include "parallel/tp_mappings.h"
#include "models/tp_weights.h"
#include "parallel/vocab_parallel_loss.h"
#include "base/error.h"

namespace kiln {

// ---- RMSNorm ---------------------------------------------------------------------------------

RMSNormImpl::RMSNormImpl(int64_t dim, double eps, std::shared_ptr<TensorParallel> tp) : eps_(eps), tp_(std::move(tp)) {
  weight = register_parameter("weight", shape_only({dim}));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  // Sequence parallel: each rank normalises its slice of the sequence, so the weight's gradient
  // is the sum of the ranks' (copy_to_region: identity forward, all-reduce backward).
  at::Tensor w = tp_ && tp_->sequence_parallel() ? copy_to_region(weight, tp_->group()) : weight;
  return rms_norm(x, w, eps_);  // normalised in fp32, scaled in x's dtype, as LlamaRMSNorm
}

// ---- Rotary embeddings -----------------------------------------------------------------------

at::Tensor rope_inv_freq(const ModelConfig& cfg, int64_t seq_len) {
  const int64_t dim = cfg.head_dim();
  const auto& rs = cfg.rope_scaling;
  const int64_t original = rs.original_max_seq_len > 0 ? rs.original_max_seq_len : cfg.max_seq_len;
  double base = cfg.rope_theta;
  if (rs.type == RopeType::dynamic) {
    // NTK-aware: grow the base once the sequence outruns the original context.
    double len = static_cast<double>(std::max<int64_t>(seq_len, original));
    base *= std::pow(rs.factor * len / original - (rs.factor - 1), double(dim) / (dim - 2));
  }
  at::Tensor exponent = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<float>(dim);
  at::Tensor inv_freq = 1.0 / at::pow(base, exponent);  // (D/2)
  if (rs.type == RopeType::linear) inv_freq = inv_freq / rs.factor;
  if (rs.type == RopeType::llama3) {
    // Long wavelengths divided by factor, short kept, a smooth blend in between.
    const double low_wavelen = original / rs.low_freq_factor;
    const double high_wavelen = original / rs.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq);
    at::Tensor smooth =
        (original / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    at::Tensor blended = (1 - smooth) * scaled / rs.factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq = at::where(medium, blended, scaled);
  }
  return inv_freq;
}

RopeTables rope_tables(const ModelConfig& cfg, int64_t seq_len, const at::TensorOptions& opts) {
  at::Tensor inv_freq = rope_inv_freq(cfg, seq_len);
  at::Tensor pos = at::arange(seq_len, at::kFloat);
  at::Tensor freqs = at::outer(pos, inv_freq);   // (T, D/2)
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // (T, D)
  return {emb.cos().to(opts), emb.sin().to(opts)};
}

at::Tensor alibi_slopes(int64_t num_heads) {
  auto pow2_slopes = [](int64_t n) {
    std::vector<float> s;
    double start = std::pow(2.0, -std::pow(2.0, -(std::log2(double(n)) - 3)));
    for (int64_t i = 0; i < n; ++i) s.push_back(static_cast<float>(std::pow(start, i + 1)));
    return s;
  };
  int64_t closest = int64_t(1) << static_cast<int64_t>(std::floor(std::log2(double(num_heads))));
  std::vector<float> slopes = pow2_slopes(closest);
  if (closest < num_heads) {
    std::vector<float> extra = pow2_slopes(2 * closest);
    for (int64_t i = 0; i < num_heads - closest; ++i) slopes.push_back(extra[2 * i]);
  }
  return at::tensor(slopes, at::kFloat);
}

// ---- Attention -------------------------------------------------------------------------------

AttentionImpl::AttentionImpl(const ModelConfig& cfg, int64_t layer, const ProjectionFactory& make)
    : num_heads_(cfg.num_heads), num_kv_heads_(cfg.kv_heads()), head_dim_(cfg.head_dim()) {
  const int64_t h = cfg.hidden_size;
  const int64_t D = head_dim_;  // heads are split whole
  q_proj = register_module("q_proj", make({"q_proj", layer, h, num_heads_ * D, ShardDim::Out, D}));
  k_proj = register_module("k_proj", make({"k_proj", layer, h, num_kv_heads_ * D, ShardDim::Out, D}));
  v_proj = register_module("v_proj", make({"v_proj", layer, h, num_kv_heads_ * D, ShardDim::Out, D}));
  o_proj = register_module("o_proj", make({"o_proj", layer, num_heads_ * D, h, ShardDim::In, D}));
  // The heads this rank computes (all of them unless a tensor-parallel factory split them).
  num_heads_ = q_proj->spec().local_out() / D;
  num_kv_heads_ = k_proj->spec().local_out() / D;
  head_offset_ = q_proj->spec().shard_len > 0 ? q_proj->spec().shard_offset / D : 0;
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const AttentionContext& ctx) {
  // T from q, not x: under sequence parallel x holds 1/tp of the sequence and q_proj gathers it.
  at::Tensor q_full = q_proj(x);
  const int64_t B = q_full.size(0), T = q_full.size(1);
  if (ctx.cu_seqlens.defined()) {
    // Documents laid end to end (N = B*T) through varlen attention (flash on CUDA, kiln's kernel
    // on the CPU). No selective recomputation here: the kernels keep only q, k, v, the output and
    // the (N, H) log-sum-exp, which is what recomputing the core would keep anyway.
    at::Tensor q = q_full.view({B * T, num_heads_, head_dim_});        // (N, H, D)
    at::Tensor k = k_proj(x).view({B * T, num_kv_heads_, head_dim_});  // (N, K, D)
    at::Tensor v = v_proj(x).view({B * T, num_kv_heads_, head_dim_});
    at::Tensor cos = ctx.cos.reshape({B * T, 1, head_dim_}), sin = ctx.sin.reshape({B * T, 1, head_dim_});
    q = rope(q, cos, sin);
    k = rope(k, cos, sin);
    VarlenLayout layout{ctx.cu_seqlens, ctx.max_seqlen};
    at::Tensor out = varlen_attention(q, k, v, layout);  // (N, H, D)
    return o_proj(out.view({B, T, num_heads_ * head_dim_}));
  }
  at::Tensor q = q_full.view({B, T, num_heads_, head_dim_}).transpose(1, 2);        // (B, H, T, D)
  at::Tensor k = k_proj(x).view({B, T, num_kv_heads_, head_dim_}).transpose(1, 2);  // (B, K, T, D)
  at::Tensor v = v_proj(x).view({B, T, num_kv_heads_, head_dim_}).transpose(1, 2);
  if (ctx.cos.defined()) {
    at::Tensor cos = ctx.cos.unsqueeze(1), sin = ctx.sin.unsqueeze(1);  // (B, 1, T, D)
    q = rope(q, cos, sin);
    k = rope(k, cos, sin);
  }
  if (num_kv_heads_ != num_heads_) {
    const int64_t rep = num_heads_ / num_kv_heads_;
    k = k.repeat_interleave(rep, /*dim=*/1);
    v = v.repeat_interleave(rep, /*dim=*/1);
  }
  at::Tensor mask = ctx.mask;
  if (mask.defined() && mask.is_floating_point()) mask = mask.to(q.scalar_type());
  // ALiBi's per-head bias: the slopes of this rank's heads.
  if (mask.defined() && mask.size(1) > 1 && mask.size(1) != num_heads_) mask = mask.narrow(1, head_offset_, num_heads_);
  const bool is_causal = ctx.causal && !mask.defined();
  auto core = [is_causal](const std::vector<at::Tensor>& in) {  // in: q, k, v[, mask]
    std::optional<at::Tensor> mask = in.size() > 3 ? std::optional<at::Tensor>(in[3]) : std::nullopt;
    return at::scaled_dot_product_attention(in[0], in[1], in[2], mask, /*dropout_p=*/0.0, is_causal);
  };
  std::vector<at::Tensor> core_in{q, k, v};
  if (mask.defined()) core_in.push_back(mask);
  // Selective recomputation: keep only q, k, v; the (T x T) attention internals are redone.
  at::Tensor out = recompute_core && q.requires_grad() ? recompute(core_in, core) : core(core_in);
  out = out.transpose(1, 2).reshape({B, T, num_heads_ * head_dim_});
  return o_proj(out);
}

// ---- MLP and decoder layer -------------------------------------------------------------------

MLPImpl::MLPImpl(const ModelConfig& cfg, int64_t layer, const ProjectionFactory& make) {
  const int64_t h = cfg.hidden_size, f = cfg.ffn_size();
  gate_proj = register_module("gate_proj", make({"gate_proj", layer, h, f, ShardDim::Out}));
  up_proj = register_module("up_proj", make({"up_proj", layer, h, f, ShardDim::Out}));
  down_proj = register_module("down_proj", make({"down_proj", layer, f, h, ShardDim::In}));
}

at::Tensor MLPImpl::forward(const at::Tensor& x) { return down_proj(swiglu(gate_proj(x), up_proj(x))); }

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& cfg, int64_t layer, const ProjectionFactory& make,
                                   std::shared_ptr<TensorParallel> tp) {
  self_attn = register_module("self_attn", Attention(cfg, layer, make));
  mlp = register_module("mlp", MLP(cfg, layer, make));
  input_layernorm = register_module("input_layernorm", RMSNorm(cfg.hidden_size, cfg.norm_eps, tp));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(cfg.hidden_size, cfg.norm_eps, tp));
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& x, const AttentionContext& ctx) {
  at::Tensor h = x + self_attn(input_layernorm(x), ctx);
  return h + mlp(post_attention_layernorm(h));
}

// ---- The stack -------------------------------------------------------------------------------

EmbeddingImpl::EmbeddingImpl(int64_t vocab, int64_t dim, std::shared_ptr<TensorParallel> tp) : tp_(std::move(tp)) {
  int64_t rows = vocab;
  if (tp_) {
    const DimShard s = shard_dim(vocab, 1, tp_->rank(), tp_->size());
    vocab_offset = s.offset;
    rows = s.len;
  }
  weight = register_parameter("weight", shape_only({rows, dim}));
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& ids) {
  return tp_ ? vocab_parallel_embedding(ids, weight, vocab_offset, *tp_) : at::embedding(weight, ids);
}

LlamaImpl::LlamaImpl(const ModelConfig& cfg, StageSpec stage) : LlamaImpl(cfg, LlamaBuild{stage, {}, false}) {}

LlamaImpl::LlamaImpl(const ModelConfig& cfg, LlamaBuild build) : cfg_(cfg), stage_(build.stage), tp_(build.tp) {
  const ProjectionFactory make = build.projections ? build.projections : dense_projections();
  if (stage_.layer_end < 0) stage_.layer_end = cfg.num_layers;
  KILN_CHECK(
      0 <= stage_.layer_begin && stage_.layer_begin <= stage_.layer_end && stage_.layer_end <= cfg.num_layers,
      "bad stage layer range");
  // HF names: the body lives under "model", the head beside it.
  auto body = register_module("model", std::make_shared<torch::nn::Module>());
  if (stage_.has_embedding || (stage_.has_head && cfg.tie_embeddings))
    embed_tokens =
        body->register_module("embed_tokens", Embedding(cfg.padded_vocab(), cfg.hidden_size, tp_));
  auto layer_list = body->register_module("layers", std::make_shared<torch::nn::Module>());
  for (int64_t i = stage_.layer_begin; i < stage_.layer_end; ++i)
    layers.push_back(layer_list->register_module(std::to_string(i), DecoderLayer(cfg, i, make, tp_)));
  if (stage_.has_head) {
    norm = body->register_module("norm", RMSNorm(cfg.hidden_size, cfg.norm_eps, tp_));
    if (!cfg.tie_embeddings)
      lm_head = register_module("lm_head", make({"lm_head", -1, cfg.hidden_size, cfg.padded_vocab(), ShardDim::Out}));
  }
  // Without a meta build: the random init of the torch seed, at once (tests, small tools).
  if (!build.meta) reset_parameters();
}

void LlamaImpl::reset_parameters() { reset_parameters(at::detail::getDefaultCPUGenerator().current_seed()); }

void LlamaImpl::reset_parameters(uint64_t seed) {
  std::unique_ptr<WeightSource> source = random_init_source(cfg_, seed);
  if (!tp_) return materialize(*this, *source);
  TpShardedSource sharded(*source, tp_shards());  // each rank its slices of the global tensors
  materialize(*this, sharded);
}

TpShardMap LlamaImpl::tp_shards() const {
  TpShardMap out;
  if (!tp_) return out;
  for (const auto& item : named_modules()) {
    const std::string& name = item.key();
    if (auto* p = dynamic_cast<const ProjectionImpl*>(item.value().get())) {
      // The weight, and an adapter's tensors beside it (models/lora_projection.h), each split
      // along the dimension the projection says, or whole.
      const ProjectionSpec& s = p->spec();
      for (const auto& param : p->named_parameters(/*recurse=*/false)) {
        ProjectionImpl::GlobalShape g = p->global_shape(param.key());
        if (g.dim < 0) continue;
        out[name + "." + param.key()] =
            TpShard{std::move(g.shape), g.dim, s.shard_offset, s.shard_len, s.replicas, tp_->rank() % s.replicas};
      }
    } else if (auto* e = dynamic_cast<const EmbeddingImpl*>(item.value().get())) {
      out[name + ".weight"] = TpShard{{cfg_.padded_vocab(), cfg_.hidden_size}, 0, e->vocab_offset, e->weight.size(0), 1, 0};
    }
  }
  return out;
}

std::vector<int64_t> LlamaImpl::unit_reads(int64_t unit) const {
  // A tied head on a stage that also holds the embedding reads unit 0's weight.
  if (unit == num_units() - 1 && stage_.has_head && !lm_head && stage_.has_embedding && unit > 0) return {0};
  return {};
}

std::vector<std::pair<std::string, at::Tensor>> LlamaImpl::chain_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

int64_t LlamaImpl::num_units() const {
  return (stage_.has_embedding ? 1 : 0) + static_cast<int64_t>(layers.size()) + (stage_.has_head ? 1 : 0);
}

std::vector<std::pair<std::string, at::Tensor>> LlamaImpl::unit_parameters(int64_t unit) const {
  KILN_CHECK(unit >= 0 && unit < num_units(), "unit ", unit, " of ", num_units());
  std::vector<std::pair<std::string, at::Tensor>> out;
  int64_t u = unit;
  if (stage_.has_embedding) {
    if (u == 0) return {{"model.embed_tokens.weight", embed_tokens->weight}};
    --u;
  }
  if (u < static_cast<int64_t>(layers.size())) {
    std::string prefix = str("model.layers.", stage_.layer_begin + u, ".");
    for (const auto& item : layers[u]->named_parameters())
      out.emplace_back(prefix + item.key(), item.value());
    return out;
  }
  out.emplace_back("model.norm.weight", norm->weight);
  if (lm_head)
    out.emplace_back("lm_head.weight", lm_head->weight);
  else if (!stage_.has_embedding)
    out.emplace_back("model.embed_tokens.weight", embed_tokens->weight);
  return out;
}

AttentionContext LlamaImpl::attention_context(const Batch& batch, const at::TensorOptions& opts) const {
  AttentionContext ctx;
  const at::Tensor& pos = batch.position_ids;  // (B, T)
  const int64_t T = pos.size(1);
  if (cfg_.position == Position::rope) {
    int64_t span = std::max<int64_t>(T, pos.max().item<int64_t>() + 1);
    const bool dynamic = cfg_.rope_scaling.type == RopeType::dynamic;
    const bool reusable = rope_cache_span_ > 0 && rope_cache_.cos.device() == opts.device() &&
                          rope_cache_.cos.scalar_type() == opts.dtype().toScalarType() &&
                          (dynamic ? rope_cache_span_ == span : rope_cache_span_ >= span);
    if (!reusable) {
      if (!dynamic) span = std::max(span, cfg_.max_seq_len);
      rope_cache_ = rope_tables(cfg_, span, opts);
      rope_cache_span_ = span;
    }
    const RopeTables& tables = rope_cache_;
    ctx.cos = tables.cos.index_select(0, pos.reshape(-1)).view({pos.size(0), T, -1});  // (B, T, D)
    ctx.sin = tables.sin.index_select(0, pos.reshape(-1)).view({pos.size(0), T, -1});
  }
  ctx.causal = true;
  if (batch.packed && cfg_.position == Position::rope &&
      varlen_attention_supported(opts.device(), opts.dtype().toScalarType(), cfg_.head_dim())) {
    // CUDA in fp16/bf16 and the CPU in fp32: document offsets instead of a (B, 1, T, T) mask (1 GiB
    // of bools at T = 16k, B = 4, and on the CPU a float copy of it per layer).
    VarlenLayout layout = varlen_layout(pos);
    ctx.cu_seqlens = layout.cu_seqlens;
    ctx.max_seqlen = layout.max_seqlen;
    return ctx;
  }
  if (!batch.packed && cfg_.position == Position::rope && T <= kCpuAttentionDenseMaxLen &&
      cpu_varlen_attention_supported(opts.device(), opts.dtype().toScalarType())) {
    // Causal rows up to 1024 tokens on the CPU in fp32 through the same kernel, each row one
    // document: faster there than SDPA's CPU flash kernel with k and v repeated to every head.
    const int64_t B = pos.size(0);
    ctx.cu_seqlens = at::arange(0, B * T + 1, T, at::TensorOptions().dtype(at::kInt));
    ctx.max_seqlen = T;
    return ctx;
  }
  at::Tensor causal = at::ones({T, T}, at::TensorOptions().dtype(at::kBool).device(pos.device())).tril();
  at::Tensor allowed;  // (B, 1, T, T) bool
  if (batch.packed) {
    at::Tensor doc = (pos == 0).cumsum(/*dim=*/1);  // (B, T): document index within the row
    allowed = doc.unsqueeze(2).eq(doc.unsqueeze(1)).logical_and(causal).unsqueeze(1);
  }
  if (cfg_.position == Position::alibi) {
    // bias[h, i, j] = -slope_h * (i - j) for j <= i; -inf where not allowed.
    at::Tensor idx = at::arange(T, pos.options()).to(at::kFloat);
    at::Tensor dist = (idx.unsqueeze(1) - idx.unsqueeze(0));            // (T, T)
    at::Tensor slopes = alibi_slopes(cfg_.num_heads).to(pos.device());  // (H)
    at::Tensor bias = -slopes.view({-1, 1, 1}) * dist.unsqueeze(0);     // (H, T, T)
    at::Tensor ok = allowed.defined() ? allowed : causal.view({1, 1, T, T});
    ctx.mask = bias.unsqueeze(0).masked_fill(ok.logical_not(), -std::numeric_limits<float>::infinity());
  } else if (allowed.defined()) {
    ctx.mask = allowed;
  }
  return ctx;
}

at::Tensor LlamaImpl::local_logits(const at::Tensor& h) {
  Communicator& g = tp_->group();
  auto replicated = [&](const at::Tensor& x) { return tp_->sequence_parallel() ? gather_seq(x, g) : copy_to_region(x, g); };
  at::Tensor logits;
  int64_t offset = 0;
  if (lm_head) {
    offset = lm_head->spec().shard_offset;
    logits = cfg_.norm_head ? at::linear(replicated(h), effective_head_weight(lm_head->weight, cfg_)) : lm_head(h);
  } else {
    offset = embed_tokens->vocab_offset;
    logits = at::linear(replicated(h), effective_head_weight(embed_tokens->weight, cfg_));
  }
  return mask_vocab_slice(logits.to(at::kFloat), offset, cfg_.vocab_size);  // (B, T, S)
}

at::Tensor LlamaImpl::forward(const Batch& batch, const at::Tensor& hidden_in) {
  return run_units(batch, hidden_in, [this](const at::Tensor& in) {
    at::Tensor h = norm(in);
    // Tensor parallel: the ranks' slices gathered (generate, eval); the loss never does this.
    if (tp_) return gather_last_dim(local_logits(h), tp_->group()).narrow(-1, 0, cfg_.padded_vocab());
    // (B, T, V) fp32; NormHead and vocabulary padding in models/lm_head.h
    return lm_head ? head_logits(h, lm_head, cfg_) : head_logits(h, embed_tokens->weight, cfg_);
  });
}

namespace {

// The head's rows for the chunked loss (models/ops/linear_cross_entropy.h), cut to the real
// vocabulary; undefined when the head is not a plain dense projection (LoRA, NF4, parallel: their
// own forward).
at::Tensor plain_head_weight(const LlamaImpl& m) {
  if (m.lm_head && typeid(*m.lm_head.get()) != typeid(ProjectionImpl)) return {};
  const ModelConfig& cfg = m.config();
  at::Tensor w = effective_head_weight(m.lm_head ? m.lm_head->weight : m.embed_tokens->weight, cfg);
  // The padding rows are never predicted (-inf logits): leaving them out is the same softmax.
  return w.size(0) > cfg.vocab_size ? w.narrow(0, 0, cfg.vocab_size) : w;
}

}  // namespace

at::Tensor LlamaImpl::forward_loss(const Batch& batch, const at::Tensor& token_weights, const at::Tensor& hidden_in) {
  KILN_CHECK(stage_.has_head, "forward_loss on a stage without the head");
  at::Tensor labels = batch.labels, weights = token_weights;
  return run_units(batch, hidden_in, [this, labels, weights](const at::Tensor& in) {
    at::Tensor h = norm(in);
    if (tp_) {  // vocab-parallel cross-entropy from this rank's logits slice
      at::Tensor logits = local_logits(h);
      const int64_t offset = lm_head ? lm_head->spec().shard_offset : embed_tokens->vocab_offset;
      at::Tensor per_token = vocab_parallel_cross_entropy(logits.reshape({-1, logits.size(-1)}), labels.reshape(-1),
                                                          offset, tp_->group(), kIgnoreIndex);
      return weights.defined() ? (per_token * weights.reshape(-1).to(per_token.scalar_type())).sum() : per_token.sum();
    }
    // A plain dense (or tied) head: head and loss in one chunked op, no (B, T, V) fp32 logits.
    if (at::Tensor w = plain_head_weight(*this); w.defined())
      return linear_cross_entropy_sum(h.reshape({-1, h.size(-1)}), w, labels.reshape(-1),
                                      weights.defined() ? weights.reshape(-1) : weights, kIgnoreIndex);
    at::Tensor logits = lm_head ? head_logits(h, lm_head, cfg_) : head_logits(h, embed_tokens->weight, cfg_);
    return weights.defined() ? lm_loss_weighted_sum(logits, labels, weights) : lm_loss_sum(logits, labels);
  });
}

at::Tensor LlamaImpl::run_units(const Batch& batch, const at::Tensor& hidden_in, const UnitFn& head) {
  const at::TensorOptions opts = parameters().front().options();
  // Shared, not a local: recomputation (activation checkpointing, ZeRO-3) runs the units
  // again during backward, after this function has returned.
  auto ctx = std::make_shared<AttentionContext>(attention_context(batch, opts));
  auto run = [&](int64_t unit, const at::Tensor& x, const UnitFn& fn) {
    return runner_ ? runner_(unit, x, fn) : fn(x);
  };
  int64_t unit = 0;
  at::Tensor x;
  if (stage_.has_embedding) {
    x = run(unit++, batch.input_ids, [this](const at::Tensor& ids) { return embed_tokens(ids); });
  } else {
    KILN_CHECK(hidden_in.defined(), "a stage without the embedding needs hidden states");
    x = hidden_in;
  }
  for (auto& layer : layers)
    x = run(unit++, x, [ctx, layer](const at::Tensor& in) mutable { return layer->forward(in, *ctx); });
  if (!stage_.has_head) return x;
  return run(unit++, x, head);
}

at::Tensor lm_loss_sum(const at::Tensor& logits, const at::Tensor& labels) {
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat), labels.reshape(-1),
                                /*weight=*/{}, at::Reduction::Sum, /*ignore_index=*/kIgnoreIndex);
}

at::Tensor lm_loss_weighted_sum(const at::Tensor& logits, const at::Tensor& labels,
                                const at::Tensor& weights) {
  at::Tensor per_token =
      at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat), labels.reshape(-1),
                             /*weight=*/{}, at::Reduction::None, /*ignore_index=*/kIgnoreIndex);
  return (per_token * weights.reshape(-1).to(per_token.scalar_type())).sum();
}

}  // namespace kiln
