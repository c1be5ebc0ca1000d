// The memory plan's terms (trainer/memory_plan.h) in closed form: what each layout, attention path
// and recomputation mode keeps. tests/e2e/test_memory_plan.sh checks the total against a measured
// training peak.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "models/ops/cpu_gemm.h"
#include "trainer/config.h"
#include "trainer/memory_plan.h"

namespace kiln {
namespace {

// The demo's shape: h 128, 4 layers, 4 heads, 2 KV heads (GQA), FFN 384, vocab 4000, fp32.
Config demo(std::vector<std::string> sets = {}) {
  sets.insert(sets.begin(), "train.precision=fp32");  // first, so that a test may set another
  return parse_config(
      "model: {vocab_size: 4000, hidden_size: 128, num_layers: 4, num_heads: 4, num_kv_heads: 2, "
      "max_seq_len: 4096}\n"
      "data: {seq_len: 1024, packing: false}\n"
      "train: {micro_batch_size: 2}\n",
      "cfg.yaml", sets);
}

constexpr double kH = 128, kF = 384, kV = 4000, kL = 4;

TEST(MemoryPlan, OptimizerStateIsFourFp32CopiesOfTheRanksShare) {
  const double P = static_cast<double>(demo().model.num_parameters());
  EXPECT_DOUBLE_EQ(plan_memory(demo(), 1, 0).optimizer, 16 * P);
  EXPECT_DOUBLE_EQ(plan_memory(demo({"parallel.zero=0"}), 2, 0).optimizer, 16 * P);  // replicated
  for (int z = 1; z <= 3; ++z) {
    const MemoryPlan m = plan_memory(demo({"parallel.zero=" + std::to_string(z)}), 4, 0);
    EXPECT_DOUBLE_EQ(m.optimizer, 16 * P / 4) << "ZeRO-" << z;
    EXPECT_DOUBLE_EQ(m.grad_flat, 4 * P / 4) << "ZeRO-" << z;
  }
  // Stages 0-2 hold the whole model; stage 3's fp32 shard on the CPU is the master itself.
  EXPECT_DOUBLE_EQ(plan_memory(demo({"parallel.zero=2"}), 4, 0).params, 4 * P);
  EXPECT_DOUBLE_EQ(plan_memory(demo({"parallel.zero=3"}), 4, 0).params, 0);
}

TEST(MemoryPlan, GradientsPerStage) {
  const double P = static_cast<double>(demo().model.num_parameters());
  EXPECT_DOUBLE_EQ(plan_memory(demo({"parallel.zero=1"}), 2, 0).grads, 4 * P);
  // Stage 2 (reduce-scatter during backward) and 3: a unit at a time, the embedding the largest.
  EXPECT_LT(plan_memory(demo({"parallel.zero=2"}), 2, 0).grads, 4 * P);
  EXPECT_DOUBLE_EQ(plan_memory(demo({"parallel.zero=3"}), 2, 0).grads, 4 * kV * kH);
}

TEST(MemoryPlan, SavedActivationsPerLayerInClosedForm) {
  const double N = 2 * 1024;
  // fp32 on the CPU (fused RMSNorm and SwiGLU, the varlen attention kernel): x, two norms' outputs,
  // rotated q, k and v unrepeated (2 x 64 = h), attention output, residual: 7 h, the log-sum-exp
  // (4 heads of fp32), and FFN gate, up and product: 3 f. (KILN_CPU_KERNELS=aten: the bf16 terms.)
  const bool kernels = cpu_kernels_on();
  const double fp32_layer = kernels ? 7 * kH + 4 + 3 * kF : 10 * kH + 4 * kF;
  EXPECT_DOUBLE_EQ(plan_memory(demo(), 1, 0).activations, kL * N * 4 * fp32_layer);
  // bf16 (the ATen ops, SDPA): x, two norms of 2 plus their fp32 copies (8 h), rotated q, repeated k
  // and v, attention output, residual: 14 h of 2 bytes; FFN: 4 f.
  EXPECT_DOUBLE_EQ(plan_memory(demo({"train.precision=bf16"}), 1, 0).activations, kL * N * 2 * (14 * kH + 4 * kF));
  // Selective keeps the same with the flash kernels (their inputs and output are what they save).
  EXPECT_DOUBLE_EQ(plan_memory(demo({"train.activation_checkpointing=selective"}), 1, 0).activations,
                   kL * N * 4 * fp32_layer);
  // Full (and ZeRO-3's per-unit recomputation): each layer's input only, one layer redone.
  for (const char* s : {"train.activation_checkpointing=full", "parallel.zero=3"}) {
    const MemoryPlan m = plan_memory(demo({s}), 1, 0);
    EXPECT_DOUBLE_EQ(m.activations, kL * N * 4 * kH) << s;
    EXPECT_DOUBLE_EQ(m.layer_backward, N * 4 * fp32_layer + N * 4 * (3 * kF + 4 * kH)) << s;
  }
  // Linear in the tokens of a micro-batch (up to 1024 both on the kernel's path).
  EXPECT_DOUBLE_EQ(plan_memory(demo(), 1, 0).activations,
                   2 * plan_memory(demo({"data.seq_len=512"}), 1, 0).activations);
  // Dense rows longer than 1024 take SDPA (k and v repeated: 8 h and 4 f with the fused norms).
  if (cpu_kernels_on()) {
    EXPECT_DOUBLE_EQ(plan_memory(demo({"data.seq_len=2048"}), 1, 0).activations,
                     kL * 2 * 2048 * 4 * (8 * kH + 3 * kF));
  }
}

TEST(MemoryPlan, PackedRowsKeepAMaskAndAFloatCopyPerLayerOutsideTheKernels) {
  EXPECT_EQ(plan_memory(demo(), 1, 0).attention_mask, 0);  // dense causal: no mask
  // fp32 on the CPU: the varlen kernel, no mask either.
  if (cpu_kernels_on()) {
    EXPECT_EQ(plan_memory(demo({"data.packing=true"}), 1, 0).attention_mask, 0);
  }
  // bf16 on the CPU: the (B, 1, T, T) bool mask and a bf16 copy per layer.
  const double T = 1024, B = 2;
  EXPECT_DOUBLE_EQ(plan_memory(demo({"data.packing=true", "train.precision=bf16"}), 1, 0).attention_mask,
                   B * T * T + kL * B * T * T * 2);
  // Recomputing the core: one layer's copy at a time.
  EXPECT_DOUBLE_EQ(plan_memory(demo({"data.packing=true", "train.precision=bf16",
                                     "train.activation_checkpointing=selective"}),
                               1, 0)
                       .attention_mask,
                   B * T * T + B * T * T * 2);
}

TEST(MemoryPlan, RuntimeAddsToThePeak) {
  const MemoryPlan bare = plan_memory(demo(), 1, 0), with = plan_memory(demo(), 1, 300e6);
  EXPECT_DOUBLE_EQ(with.peak - bare.peak, 300e6);
  EXPECT_GE(bare.peak, bare.forward_end);
  EXPECT_GE(bare.peak, bare.backward);
  EXPECT_GE(bare.peak, bare.reduce);
  EXPECT_EQ(training_runtime_extra(4, /*cuda=*/true), 0);
  EXPECT_GT(training_runtime_extra(4, false), training_runtime_extra(1, false));
}

TEST(MemoryPlan, ResidentBytesNowSeesTouchedPages) {
  const double before = resident_bytes_now();
  ASSERT_GT(before, 0);
  std::vector<char> buf(64 << 20);
  std::memset(buf.data(), 1, buf.size());
  EXPECT_GT(resident_bytes_now() - before, 60.0 * (1 << 20));
  EXPECT_EQ(buf[12345], 1);
}

}  // namespace
}  // namespace kiln
