// ModelConfig: the shape of a Llama-family decoder. Plain data, no torch, so every layer of
// kiln (config, planner, data) can include it cheaply.
#pragma once
#include <cstdint>
#include <string>

#include "base/choice.h"

namespace kiln {

enum class Arch { llama, baichuan };  // baichuan: fused W_pack, ALiBi in 13B
template <>
struct ChoiceNames<Arch> {
  static constexpr const char* names[] = {"llama", "baichuan"};
};
enum class Position { rope, alibi };
template <>
struct ChoiceNames<Position> {
  static constexpr const char* names[] = {"rope", "alibi"};
};
enum class RopeType { none, linear, dynamic, llama3 };
template <>
struct ChoiceNames<RopeType> {
  static constexpr const char* names[] = {"none", "linear", "dynamic", "llama3"};
};

struct RopeScaling {
  RopeType type = RopeType::none;
  double factor = 1.0;               // context extension factor (4k -> 16k: 4)
  int64_t original_max_seq_len = 0;  // dynamic/llama3: the pretraining context (0 = max_seq_len)
  double low_freq_factor = 1.0;      // llama3
  double high_freq_factor = 4.0;     // llama3
};

struct ModelConfig {
  Arch arch = Arch::llama;
  int64_t vocab_size = 512;
  int64_t hidden_size = 64;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 0;     // 0 = num_heads (multi-head); fewer = grouped-query attention
  int64_t ffn_hidden_size = 0;  // 0 = Llama's rule: 2/3 * 4h rounded up to a multiple of 64
  int64_t max_seq_len = 256;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  Position position = Position::rope;
  bool tie_embeddings = false;
  double norm_eps = 1e-5;
  double init_std = 0.02;
  std::string init_from = "none";  // none | hf:DIR | ckpt:DIR

  int64_t kv_heads() const { return num_kv_heads > 0 ? num_kv_heads : num_heads; }
  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t ffn_size() const {
    if (ffn_hidden_size > 0) return ffn_hidden_size;
    int64_t f = 2 * 4 * hidden_size / 3;
    return (f + 63) / 64 * 64;
  }
  // Parameter count of the whole model (embedding, layers, final norm, head).
  int64_t num_parameters() const;
  // Training FLOPs per token: 6 * dense parameters + attention (12 * L * h * T, causal halved).
  double flops_per_token(int64_t seq_len) const;
};

}  // namespace kiln
