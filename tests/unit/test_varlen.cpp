// Variable-length attention for packed rows: document offsets (cu_seqlens) from position_ids in
// closed form; the CPU kernel (fp32) against masked SDPA, forward and backward, and a packed row
// through it against its documents alone; other CPU types keeping the mask path; and (on a CUDA
// machine only) the flash kernel against masked SDPA in fp32 and a packed model on CUDA against
// the same model on the CPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include "models/llama.h"
#include "models/ops/cpu_attention.h"
#include "models/ops/varlen_attention.h"

namespace kiln {
namespace {

std::vector<int32_t> cu_of(const std::vector<int64_t>& pos, int64_t B) {
  const int64_t T = static_cast<int64_t>(pos.size()) / B;
  return cu_seqlens_from_positions(pos.data(), B, T);
}

TEST(Varlen, OneRowTwoDocuments) { EXPECT_EQ(cu_of({0, 1, 2, 0, 1}, 1), (std::vector<int32_t>{0, 3, 5})); }

TEST(Varlen, UnpackedRowsAreOneDocumentEach) {
  EXPECT_EQ(cu_of({0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}, 3), (std::vector<int32_t>{0, 4, 8, 12}));
}

TEST(Varlen, PaddingTailIsItsOwnDocument) {
  // The loader pads a row with positions restarting at 0: a 4-token document, 2 of padding.
  EXPECT_EQ(cu_of({0, 1, 2, 3, 0, 1}, 1), (std::vector<int32_t>{0, 4, 6}));
  // A single padding token after two documents.
  EXPECT_EQ(cu_of({0, 1, 0, 1, 2, 0}, 1), (std::vector<int32_t>{0, 2, 5, 6}));
}

TEST(Varlen, RowsAreLaidEndToEnd) {
  // Row 0: documents of 2 and 4; row 1: 3, 1, 2 (offsets continue from 6).
  EXPECT_EQ(cu_of({0, 1, 0, 1, 2, 3, /**/ 0, 1, 2, 0, 0, 1}, 2), (std::vector<int32_t>{0, 2, 6, 9, 10, 12}));
}

TEST(Varlen, RowStartAlwaysStartsADocument) {
  // Positions that do not restart at a row start (a continued sequence) still split there:
  // nothing attends across rows.
  EXPECT_EQ(cu_of({0, 1, 2, 3, 4, 5}, 2), (std::vector<int32_t>{0, 3, 6}));
}

TEST(Varlen, LayoutFromTensor) {
  at::Tensor pos =
      at::tensor(std::vector<int64_t>{0, 1, 2, 3, 4, 0, 1, 0, /**/ 0, 1, 0, 1, 2, 0, 1, 2}, at::kLong)
          .view({2, 8});
  VarlenLayout layout = varlen_layout(pos);
  EXPECT_EQ(layout.cu_seqlens.scalar_type(), at::kInt);
  EXPECT_TRUE(layout.cu_seqlens.device().is_cpu());
  std::vector<int32_t> cu(layout.cu_seqlens.data_ptr<int32_t>(),
                          layout.cu_seqlens.data_ptr<int32_t>() + layout.cu_seqlens.numel());
  EXPECT_EQ(cu, (std::vector<int32_t>{0, 5, 7, 8, 10, 13, 16}));
  EXPECT_EQ(layout.num_docs, 6);
  EXPECT_EQ(layout.max_seqlen, 5);
}

// Reference: fp32 SDPA over (B=1, H, N, D) with a block-diagonal causal mask from cu_seqlens.
at::Tensor masked_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& pos) {
  const int64_t N = q.size(0), rep = q.size(1) / k.size(1);
  at::Tensor doc = (pos.view({1, N}) == 0).cumsum(1).view({N});  // (N) document index
  at::Tensor causal = at::ones({N, N}, doc.options().dtype(at::kBool)).tril();
  at::Tensor allowed = doc.unsqueeze(1).eq(doc.unsqueeze(0)).logical_and(causal);  // (N, N)
  auto heads_first = [](const at::Tensor& t) {  // (N, heads, D) -> (1, heads, N, D) fp32
    return t.to(at::kFloat).transpose(0, 1).unsqueeze(0);
  };
  at::Tensor out =
      at::scaled_dot_product_attention(heads_first(q), heads_first(k).repeat_interleave(rep, 1),
                                       heads_first(v).repeat_interleave(rep, 1), allowed.view({1, 1, N, N}));
  return out.squeeze(0).transpose(0, 1);  // (N, H, D)
}

// The position_ids of documents of these lengths laid end to end.
std::vector<int64_t> positions_of(const std::vector<int64_t>& lens) {
  std::vector<int64_t> p;
  for (int64_t len : lens)
    for (int64_t i = 0; i < len; ++i) p.push_back(i);
  return p;
}

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(1e-30, b.abs().max().item<double>());
}

TEST(CpuVarlen, MatchesMaskedAttentionForwardAndBackward) {
  struct Case {
    std::vector<int64_t> lens;
    int64_t H, K, D;
  } cases[] = {{{40, 70, 18}, 4, 2, 64},        // documents within one tile
               {{1, 300, 129, 2}, 8, 8, 16},     // longer than a tile, not multiples of it; 1-token documents
               {{128, 256}, 6, 1, 24},           // exactly tiles; every query head on one kv head
               {{513}, 4, 4, 32}};               // one document of 5 tiles
  for (const Case& c : cases) {
    at::manual_seed(static_cast<uint64_t>(c.lens.size() * 100 + c.H));
    at::Tensor pos = at::tensor(positions_of(c.lens), at::kLong).view({1, -1});
    const int64_t N = pos.size(1);
    at::Tensor q = at::randn({N, c.H, c.D}).requires_grad_(true);
    at::Tensor k = at::randn({N, c.K, c.D}).requires_grad_(true);
    at::Tensor v = at::randn({N, c.K, c.D}).requires_grad_(true);
    at::Tensor go = at::randn({N, c.H, c.D});
    VarlenLayout layout = varlen_layout(pos);
    ASSERT_TRUE(varlen_attention_supported(at::Device(at::kCPU), at::kFloat, c.D));
    at::Tensor out = varlen_attention(q, k, v, layout);
    auto grads = torch::autograd::grad({out}, {q, k, v}, {go});
    at::Tensor ref = masked_reference(q, k, v, pos);
    auto ref_grads = torch::autograd::grad({ref}, {q, k, v}, {go});
    const std::string what = "documents of " + std::to_string(c.lens[0]) + ".. H " + std::to_string(c.H) + " K " +
                             std::to_string(c.K) + " D " + std::to_string(c.D);
    EXPECT_LT(rel_err(out, ref), 1e-5) << what;
    for (int i = 0; i < 3; ++i) EXPECT_LT(rel_err(grads[i], ref_grads[i]), 1e-5) << what << ", gradient " << i;
  }
}

TEST(CpuVarlen, LogSumExpOfEveryRow) {
  at::manual_seed(5);
  at::Tensor pos = at::tensor(positions_of({3, 200}), at::kLong).view({1, -1});
  const int64_t N = pos.size(1), H = 2, D = 8;
  at::Tensor q = at::randn({N, H, D}), k = at::randn({N, 1, D}), v = at::randn({N, 1, D});
  CpuAttentionForward f = cpu_varlen_attention_forward(q, k, v, varlen_layout(pos).cu_seqlens);
  // Row 150 of document 2 (token 153), head 1: scores against tokens 3 .. 153.
  at::Tensor s = at::matmul(k.narrow(0, 3, 151).select(1, 0), q[153][1]) / std::sqrt(double(D));
  EXPECT_NEAR(f.lse[153][1].item<double>(), s.logsumexp(0).item<double>(), 1e-5);
  EXPECT_NEAR(f.lse[0][0].item<double>(), (q[0][0] * k[0][0]).sum().item<double>() / std::sqrt(double(D)), 1e-5);
}

TEST(CpuVarlen, RejectsOffsetsThatDoNotCoverTheTokens) {
  at::Tensor q = at::randn({10, 2, 8}), k = at::randn({10, 1, 8});
  EXPECT_THROW(cpu_varlen_attention_forward(q, k, k, at::tensor(std::vector<int32_t>{0, 4, 9}, at::kInt)),
               std::exception);
  EXPECT_THROW(cpu_varlen_attention_forward(q, k, k, at::tensor(std::vector<int32_t>{0, 6, 4, 10}, at::kInt)),
               std::exception);
}

TEST(Varlen, CpuFp32TakesTheKernelOtherTypesTheMask) {
  EXPECT_FALSE(varlen_flash_supported(at::Device(at::kCPU), at::kBFloat16, 64));
  EXPECT_FALSE(varlen_flash_supported(at::Device(at::kCPU), at::kFloat, 64));
  EXPECT_FALSE(varlen_attention_supported(at::Device(at::kCPU), at::kBFloat16, 64));
  ModelConfig cfg;
  Llama model(cfg);
  Batch b;
  b.position_ids = at::tensor(std::vector<int64_t>{0, 1, 2, 0, 1}, at::kLong).view({1, 5});
  b.packed = true;
  AttentionContext ctx = model->attention_context(b, at::TensorOptions().dtype(at::kFloat));
  ASSERT_TRUE(ctx.cu_seqlens.defined());
  EXPECT_FALSE(ctx.mask.defined());
  EXPECT_EQ(ctx.max_seqlen, 3);
  ctx = model->attention_context(b, at::TensorOptions().dtype(at::kBFloat16));
  EXPECT_FALSE(ctx.cu_seqlens.defined());
  ASSERT_TRUE(ctx.mask.defined());
  EXPECT_EQ(ctx.mask.sizes(), at::IntArrayRef({1, 1, 5, 5}));
  EXPECT_FALSE(ctx.mask[0][0][3][2].item<bool>());  // document 2 does not see document 1
  EXPECT_TRUE(ctx.mask[0][0][4][3].item<bool>());
}

// A packed row through the CPU kernel gives every document the logits and weight gradients it
// gets alone in a row of its own.
TEST(CpuVarlen, PackedRowEqualsItsDocumentsAlone) {
  ModelConfig cfg;  // hidden 64, 4 heads of 16
  cfg.num_kv_heads = 2;
  cfg.init_std = 0.2;  // attention that matters, so a leak across documents shows
  at::manual_seed(3);
  Llama model(cfg);
  const std::vector<int64_t> lens = {5, 9, 2};
  Batch packed;
  packed.input_ids = at::randint(0, cfg.vocab_size, {1, 16}, at::kLong);
  packed.position_ids = at::tensor(positions_of(lens), at::kLong).view({1, 16});
  packed.packed = true;
  at::Tensor logits = model->forward(packed);  // (1, 16, V)
  logits.pow(2).sum().backward();
  std::vector<at::Tensor> packed_grads;
  for (const at::Tensor& p : model->parameters()) packed_grads.push_back(p.grad().clone()), p.mutable_grad().zero_();
  int64_t start = 0;
  for (int64_t len : lens) {
    Batch alone;
    alone.input_ids = packed.input_ids.narrow(1, start, len);
    alone.position_ids = at::arange(len, at::kLong).view({1, len});
    at::Tensor l = model->forward(alone);
    EXPECT_LT(rel_err(logits.narrow(1, start, len), l), 1e-5) << "document at " << start;
    l.pow(2).sum().backward();
    start += len;
  }
  auto params = model->parameters();
  for (size_t i = 0; i < params.size(); ++i) EXPECT_LT(rel_err(params[i].grad(), packed_grads[i]), 1e-5) << i;
  Batch leaky = packed;
  leaky.packed = false;
  at::NoGradGuard no_grad;
  EXPECT_GT(rel_err(model->forward(leaky).narrow(1, 5, 11), logits.narrow(1, 5, 11)), 1e-2)
      << "attending across documents must change the logits, or the test shows nothing";
}

// ---- CUDA only: skipped on machines without a GPU ------------------------------------------

TEST(VarlenCuda, FlashMatchesMaskedAttentionForwardAndBackward) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const at::Device dev(at::kCUDA);
  if (!varlen_flash_supported(dev, at::kBFloat16, 64)) GTEST_SKIP() << "GPU older than sm80";
  at::manual_seed(0);
  // One row of 3 documents: 40, 70 and 18 tokens.
  std::vector<int64_t> p;
  for (int64_t len : {40, 70, 18})
    for (int64_t i = 0; i < len; ++i) p.push_back(i);
  at::Tensor pos = at::tensor(p, at::kLong).view({1, -1}).to(dev);
  const int64_t N = pos.size(1), H = 4, K = 2, D = 64;
  auto opts = at::TensorOptions().dtype(at::kBFloat16).device(dev);
  at::Tensor q = at::randn({N, H, D}, opts).requires_grad_(true);
  at::Tensor k = at::randn({N, K, D}, opts).requires_grad_(true);
  at::Tensor v = at::randn({N, K, D}, opts).requires_grad_(true);
  at::Tensor go = at::randn({N, H, D}, opts);

  VarlenLayout layout = varlen_layout(pos);
  EXPECT_EQ(layout.num_docs, 3);
  EXPECT_EQ(layout.max_seqlen, 70);
  at::Tensor out = varlen_flash_attention(q, k, v, layout);
  auto grads = torch::autograd::grad({out}, {q, k, v}, {go});

  at::Tensor qf = q.detach().to(at::kFloat).requires_grad_(true);
  at::Tensor kf = k.detach().to(at::kFloat).requires_grad_(true);
  at::Tensor vf = v.detach().to(at::kFloat).requires_grad_(true);
  at::Tensor ref = masked_reference(qf, kf, vf, pos);
  auto ref_grads = torch::autograd::grad({ref}, {qf, kf, vf}, {go.to(at::kFloat)});

  EXPECT_LT((out.to(at::kFloat) - ref).abs().max().item<double>(), 2e-2);
  for (int i = 0; i < 3; ++i)
    EXPECT_LT((grads[i].to(at::kFloat) - ref_grads[i]).abs().max().item<double>(), 5e-2) << "gradient " << i;
}

TEST(VarlenCuda, PackedModelOnCudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const at::Device dev(at::kCUDA);
  if (!varlen_flash_supported(dev, at::kBFloat16, 16)) GTEST_SKIP() << "GPU older than sm80";
  ModelConfig cfg;  // hidden 64, 4 heads of 16, GQA 4 -> 2
  cfg.num_kv_heads = 2;
  cfg.init_std = 0.2;  // attention that matters, so a leak across documents shows
  at::manual_seed(0);
  Llama model(cfg);
  model->to(at::kBFloat16);  // the CPU reference uses the same (bf16-rounded) weights in fp32
  model->to(at::kFloat);
  Batch b;
  b.input_ids = at::randint(0, cfg.vocab_size, {2, 12}, at::kLong);
  const std::vector<int64_t> pos = {0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3,   // documents of 5, 3, 4
                                    0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4};  // 7, 5
  b.position_ids = at::tensor(pos, at::kLong).view({2, 12});
  b.packed = true;
  at::NoGradGuard no_grad;
  at::Tensor cpu_logits = model->forward(b);  // fp32, the CPU kernel (checked against the mask above)
  Batch leaky = b;
  leaky.packed = false;
  at::Tensor leaky_logits = model->forward(leaky);
  model->to(dev, at::kBFloat16);
  Batch db = b;
  db.input_ids = b.input_ids.to(dev);
  db.position_ids = b.position_ids.to(dev);
  EXPECT_TRUE(model->attention_context(db, model->parameters().front().options()).cu_seqlens.defined());
  at::Tensor cuda_logits = model->forward(db).cpu();
  const double scale = cpu_logits.abs().max().item<double>();
  const double err = (cuda_logits - cpu_logits).abs().max().item<double>() / scale;
  const double leak = (leaky_logits - cpu_logits).abs().max().item<double>() / scale;
  EXPECT_LT(err, 3e-2);
  EXPECT_LT(err, leak / 4) << "bf16 noise must be well below what attending across documents changes";
}

}  // namespace
}  // namespace kiln
