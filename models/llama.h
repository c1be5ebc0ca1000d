// The Llama-family decoder as LibTorch modules: RMSNorm, rotary embeddings with scaling
// (linear, dynamic NTK, llama3), grouped-query attention through scaled_dot_product_attention
// (packed rows on CUDA: variable-length flash attention, models/ops/varlen_attention.h),
// SwiGLU MLP, tied or untied embeddings, ALiBi as an option.
//
// Parameter names are Hugging Face's (model.layers.3.self_attn.q_proj.weight, lm_head.weight),
// layer indices global, so a pipeline stage that holds layers [8, 16) names them 8..15 and
// checkpoints and HF import/export need no renaming.
//
// The model runs as a chain of "units": unit 0 = embedding (on the first stage), one unit per
// decoder layer, and a last unit = final norm + LM head (on the last stage). A UnitRunner wraps
// each unit's call: activation checkpointing and ZeRO-3 parameter gathering slot in there.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/batch.h"
#include "base/model_config.h"
#include "models/projection.h"
#include "models/unit_chain.h"
#include "models/tp_layers.h"

namespace kiln {

class TensorParallel;  // models/tp_layers.h

struct StageSpec {
  int64_t layer_begin = 0;
  int64_t layer_end = -1;  // -1 = num_layers
  bool has_embedding = true;
  bool has_head = true;
};

// What a rank builds: its stage, how projections are made, and whether parameters are left on
// the meta device (shape only) for an optimizer or materialize() to fill from a WeightSource.
struct LlamaBuild {
  StageSpec stage;
  ProjectionFactory projections;  // empty = dense
  bool meta = false;              // false: random init at once from the torch seed (tests, tools)
  // Tensor parallel (models/tp_layers.h): the vocab-parallel embedding, head and loss, and the
  // sequence-parallel norms; `projections` should then be tensor_parallel_projections(tp).
  std::shared_ptr<TensorParallel> tp;
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, std::shared_ptr<TensorParallel> tp = nullptr);
  at::Tensor forward(const at::Tensor& x);  // (..., dim)
  at::Tensor weight;                        // (dim)
 private:
  double eps_;
  std::shared_ptr<TensorParallel> tp_;  // sequence parallel: the weight's gradient summed over tp
};
TORCH_MODULE(RMSNorm);

// Rotary tables for positions [0, max_len): cos, sin of shape (max_len, head_dim), with the
// configured scaling applied. Dynamic NTK recomputes the base when the sequence is longer than
// the original context.
struct RopeTables {
  at::Tensor cos, sin;  // (T, head_dim)
};
at::Tensor rope_inv_freq(const ModelConfig& cfg, int64_t seq_len);  // (head_dim/2) fp32
RopeTables rope_tables(const ModelConfig& cfg, int64_t seq_len, const at::TensorOptions& opts);
// ALiBi slopes for n heads (the geometric sequence from the paper, with the interleave for
// non-powers of two).
at::Tensor alibi_slopes(int64_t num_heads);

// Everything a layer needs about the batch, computed once per forward.
struct AttentionContext {
  at::Tensor cos, sin;  // (B, T, head_dim), gathered at position_ids
  at::Tensor mask;      // (B, 1, T, T) bool or additive float; undefined = plain causal
  bool causal = true;   // use is_causal=true in SDPA (no packing, no ALiBi)
  // Packed rows of RoPE models on CUDA in fp16/bf16 or on the CPU in fp32: document offsets for
  // varlen attention (models/ops/varlen_attention.h); `mask` is then left undefined.
  at::Tensor cu_seqlens;   // (docs + 1) int32 over the flattened B*T tokens; undefined = not varlen
  int64_t max_seqlen = 0;  // tokens in the longest document
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const ModelConfig& cfg, int64_t layer, const ProjectionFactory& make);
  at::Tensor forward(const at::Tensor& x, const AttentionContext& ctx);  // (B, T, h)
  Projection q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  bool recompute_core = false;  // selective activation checkpointing
 private:
  int64_t num_heads_, num_kv_heads_, head_dim_;  // this rank's heads (tensor parallel: its slice)
  int64_t head_offset_ = 0;                       // the first local head's global index
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(const ModelConfig& cfg, int64_t layer, const ProjectionFactory& make);
  at::Tensor forward(const at::Tensor& x);  // down(silu(gate(x)) * up(x))
  Projection gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& cfg, int64_t layer, const ProjectionFactory& make,
                   std::shared_ptr<TensorParallel> tp = nullptr);
  at::Tensor forward(const at::Tensor& x, const AttentionContext& ctx);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The token embedding: weight (V, h), rows looked up by id. Tensor parallel: rows
// [offset, offset + S) of the vocabulary (models/tp_layers.h).
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab, int64_t dim, std::shared_ptr<TensorParallel> tp = nullptr);
  at::Tensor forward(const at::Tensor& ids);  // (B, T) -> (B, T, h)
  at::Tensor weight;                          // (V, h), tensor parallel (S, h)
  int64_t vocab_offset = 0;                   // the global id of row 0
 private:
  std::shared_ptr<TensorParallel> tp_;
};
TORCH_MODULE(Embedding);

class LlamaImpl : public torch::nn::Module, public UnitChain {
 public:
  explicit LlamaImpl(const ModelConfig& cfg, StageSpec stage = {});
  LlamaImpl(const ModelConfig& cfg, LlamaBuild build);

  // Whole stage: input_ids (first stage) or hidden states (later stages) -> logits (last
  // stage, (B, T, vocab), fp32) or hidden states (B, T, h).
  at::Tensor forward(const Batch& batch, const at::Tensor& hidden_in = {});
  // The same, with the loss computed inside the head unit (so no (B, T, V) logits tensor leaves
  // it, and a vocab-parallel loss can replace it): the sum of token cross-entropy over
  // batch.labels (x token_weights (B, T) when defined), fp32 scalar. Last stage only.
  at::Tensor forward_loss(const Batch& batch, const at::Tensor& token_weights = {},
                          const at::Tensor& hidden_in = {});

  // The unit chain (see the file comment and models/unit_chain.h).
  int64_t num_units() const override;
  std::vector<std::pair<std::string, at::Tensor>> unit_parameters(int64_t unit) const override;
  std::vector<int64_t> unit_reads(int64_t unit) const override;
  std::vector<std::pair<std::string, at::Tensor>> chain_parameters() const override;
  void set_unit_runner(UnitRunner runner) override { runner_ = std::move(runner); }
  AttentionContext attention_context(const Batch& batch, const at::TensorOptions& opts) const;

  // Random init (models/weight_source.h): normal(0, init_std) for matrices, scaled by 1/sqrt(2L)
  // for the output projections (o_proj, down_proj); ones for norms. Each tensor from a generator
  // seeded by (seed, its global name), so every layout gets the same values.
  void reset_parameters(uint64_t seed);
  void reset_parameters();  // with the torch seed (at::manual_seed) as the seed

  const ModelConfig& config() const { return cfg_; }
  const StageSpec& stage() const { return stage_; }
  const std::shared_ptr<TensorParallel>& tensor_parallel() const { return tp_; }
  // Tensor parallel: where each sharded parameter sits in its global tensor (empty without tp).
  TpShardMap tp_shards() const;

  Embedding embed_tokens{nullptr};   // registered as model.embed_tokens
  std::vector<DecoderLayer> layers;  // [local index] -> model.layers.<global>
  RMSNorm norm{nullptr};             // model.norm
  Projection lm_head{nullptr};       // lm_head (absent when tied)

 private:
  ModelConfig cfg_;
  StageSpec stage_;
  std::shared_ptr<TensorParallel> tp_;
  UnitRunner runner_;
  // Tensor parallel: this rank's logits (B, T, S) of vocabulary [vocab_offset, + S), padding masked.
  at::Tensor local_logits(const at::Tensor& h);
  at::Tensor run_units(const Batch& batch, const at::Tensor& hidden_in, const UnitFn& head);
  // Rotary tables are the same every step: kept for the longest span, dtype and device seen
  // (dynamic NTK scaling depends on the span, so there only an equal span is reused).
  mutable RopeTables rope_cache_;
  mutable int64_t rope_cache_span_ = 0;
};
TORCH_MODULE(Llama);

// Sum (not mean) of token cross-entropy over labels != kIgnoreIndex, in fp32. The trainer
// divides by the global number of loss tokens so that accumulation and data parallelism give
// the mean over trained tokens of the global batch.
at::Tensor lm_loss_sum(const at::Tensor& logits, const at::Tensor& labels);
// Sum of token cross-entropy x weights (B, T) (data.loss_average: sample).
at::Tensor lm_loss_weighted_sum(const at::Tensor& logits, const at::Tensor& labels,
                                const at::Tensor& weights);

}  // namespace kiln
