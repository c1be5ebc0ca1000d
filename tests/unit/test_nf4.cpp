// NF4 against bitsandbytes (tests/fixtures/nf4/make_fixture.py): the code books bit for bit, the
// stored codes and absmax of quantize_4bit, the dequantized weight, the double-quantized absmax
// within its 8-bit error; the packed size; nf4_linear's forward and input gradient against the
// dense weight; and an Nf4Weight held by a module keeping its dtypes through Module::to(dtype).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "models/nf4.h"
#include "models/safetensors.h"

namespace kiln {
namespace {

const std::string kFixture = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/nf4/nf4.safetensors";
const char* kCases[] = {"square", "ragged", "bf16"};

// Bitwise equality of two fp32 tensors (NaN-free), with the first difference in the message.
void expect_bitwise(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  at::Tensor diff = a.contiguous().view(at::kInt).ne(b.contiguous().view(at::kInt)).reshape({-1});
  int64_t n = diff.sum().item<int64_t>();
  if (n > 0) {
    int64_t i = diff.nonzero()[0][0].item<int64_t>();
    ADD_FAILURE() << what << ": " << n << " of " << a.numel() << " differ; first at " << i << ": "
                  << a.reshape({-1})[i].item<float>() << " vs " << b.reshape({-1})[i].item<float>();
  }
}

TEST(Nf4, CodeBooksEqualBitsandbytesBitForBit) {
  SafetensorsFile f(kFixture);
  expect_bitwise(nf4_code(), f.tensor("nf4_code"), "nf4 code");
  expect_bitwise(dynamic_map(), f.tensor("dynamic_map"), "dynamic map");
}

TEST(Nf4, QuantizeEqualsBitsandbytesCodesAndDequantized) {
  SafetensorsFile f(kFixture);
  for (const char* c : kCases) {
    std::string name = c;
    at::Tensor w = f.tensor(name + ".weight");
    Nf4Weight q = nf4_quantize(w, /*double_quant=*/false);
    EXPECT_EQ(q.shape, w.sizes().vec());
    EXPECT_EQ(q.dtype, w.scalar_type());
    EXPECT_TRUE(torch::equal(q.packed, f.tensor(name + ".packed"))) << name << ": packed codes differ";
    expect_bitwise(q.absmax, f.tensor(name + ".absmax"), name + " absmax");
    // Dequantized in the weight's own dtype, as bitsandbytes returns it.
    expect_bitwise(nf4_dequantize(q, w.scalar_type()).to(at::kFloat), f.tensor(name + ".dequant"),
                   name + " dequantized");
  }
}

TEST(Nf4, DoubleQuantReproducesBitsandbytesAbsmaxWithinItsEightBitError) {
  SafetensorsFile f(kFixture);
  at::Tensor code = dynamic_map();
  // Largest half-gap between neighbouring levels of the dynamic map: the error bound of one value
  // in units of its block's absmax.
  at::Tensor gaps = code.narrow(0, 1, 255) - code.narrow(0, 0, 255);
  const float half_gap = gaps.max().item<float>() / 2;
  for (const char* c : kCases) {
    std::string name = c;
    at::Tensor w = f.tensor(name + ".weight");
    Nf4Weight q = nf4_quantize(w, /*double_quant=*/true);
    ASSERT_TRUE(q.double_quant());
    EXPECT_FALSE(q.absmax.defined());
    EXPECT_TRUE(torch::equal(q.packed, f.tensor(name + ".packed")));  // the 4-bit codes do not change
    EXPECT_EQ(q.offset, f.tensor(name + ".dq.offset").item<float>()) << name;
    expect_bitwise(q.absmax2, f.tensor(name + ".dq.absmax2"), name + " absmax2");
    ASSERT_EQ(q.absmax_q.numel(), q.blocks());
    ASSERT_EQ(q.absmax2.numel(), (q.blocks() + 255) / 256);

    at::Tensor exact = nf4_quantize(w, false).absmax;  // the fp32 absmax being compressed
    at::Tensor ours = nf4_absmax(q), theirs = f.tensor(name + ".dq.absmax");
    at::Tensor bound =
        q.absmax2.repeat_interleave(256).narrow(0, 0, q.blocks()) * half_gap * (1 + 1e-5) + 1e-7;
    EXPECT_TRUE((ours - exact).abs().le(bound).all().item<bool>())
        << name << ": kiln's absmax beyond 8-bit error";
    EXPECT_TRUE((theirs - exact).abs().le(bound).all().item<bool>())
        << name << ": bitsandbytes' absmax beyond";
    // Same 8-bit codes as bitsandbytes wherever its CPU kernel picked the nearest level (its
    // lookup table rounds the scaled value to 1/65535 first, which may pick the neighbour).
    at::Tensor same = q.absmax_q.eq(f.tensor(name + ".dq.absmax_q"));
    EXPECT_GE(same.to(at::kFloat).mean().item<float>(), 0.98f) << name;
    // Where the codes agree, the dequantized absmax and weight agree bit for bit.
    expect_bitwise(ours.masked_select(same), theirs.masked_select(same), name + " dequantized absmax");
    at::Tensor same_w = same.repeat_interleave(64).narrow(0, 0, q.numel()).view(q.shape);
    expect_bitwise(nf4_dequantize(q, w.scalar_type()).to(at::kFloat).masked_select(same_w),
                   f.tensor(name + ".dq.dequant").masked_select(same_w), name + " double-quant dequantized");
  }
}

TEST(Nf4, PackedSizeIsAboutHalfAByteAParameter) {
  at::Tensor w = torch::randn({512, 2048});
  Nf4Weight dq = nf4_quantize(w, /*double_quant=*/true);
  Nf4Weight plain = nf4_quantize(w, /*double_quant=*/false);
  const double n = static_cast<double>(w.numel());
  // 0.5 (codes) + 1/64 (8-bit absmax) + 4/16384 (absmax2) + 4/n (offset)
  EXPECT_DOUBLE_EQ(dq.nbytes() / n, 0.5 + 1.0 / 64 + 4.0 / (64 * 256) + 4.0 / n);
  EXPECT_LT(dq.nbytes() / n, 0.52);
  EXPECT_DOUBLE_EQ(plain.nbytes() / n, 0.5 + 4.0 / 64);
  EXPECT_EQ(dq.packed.scalar_type(), at::kByte);
  EXPECT_EQ(dq.packed.numel(), w.numel() / 2);
}

TEST(Nf4, LinearEqualsDenseDequantizedForwardAndInputGradient) {
  torch::manual_seed(3);
  at::Tensor w = torch::randn({24, 40}) * 0.1, bias = torch::randn({24});
  Nf4Weight q = nf4_quantize(w, /*double_quant=*/true);
  at::Tensor dense = nf4_dequantize(q, at::kFloat);
  at::Tensor x1 = torch::randn({2, 5, 40}).requires_grad_(true);
  at::Tensor x2 = x1.detach().clone().requires_grad_(true);
  at::Tensor y1 = nf4_linear(x1, q, bias);
  at::Tensor y2 = torch::nn::functional::linear(x2, dense, bias);
  EXPECT_TRUE(torch::allclose(y1, y2, 1e-6, 1e-6));
  at::Tensor g = torch::randn_like(y1);
  y1.backward(g);
  y2.backward(g);
  EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-6, 1e-6));
  // bf16 activations compute in bf16: the compute dtype comes from x, not from the stored weight.
  at::Tensor yb = nf4_linear(x1.detach().to(at::kBFloat16), q, bias.to(at::kBFloat16));
  EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
  // Without the dequantization the output is not the dense one: the test sees the codes.
  EXPECT_FALSE(torch::allclose(y1, torch::nn::functional::linear(x2, w, bias), 1e-4, 1e-4));
}

// A module holding an Nf4Weight as a plain member: Module::to(bf16) casts its parameters but not
// the packed codes or the fp32 scales.
struct HolderImpl : torch::nn::Module {
  HolderImpl() { norm = register_parameter("norm", torch::ones({4})); }
  at::Tensor norm;
  Nf4Weight base;
};
TORCH_MODULE(Holder);

TEST(Nf4, ModuleToDtypeNeverCastsThePackedBase) {
  Holder h;
  h->base = nf4_quantize(torch::randn({8, 64}), /*double_quant=*/true);
  at::Tensor before = nf4_dequantize(h->base, at::kFloat);
  h->to(at::kBFloat16);
  EXPECT_EQ(h->norm.scalar_type(), at::kBFloat16);
  EXPECT_EQ(h->base.packed.scalar_type(), at::kByte);
  EXPECT_EQ(h->base.absmax2.scalar_type(), at::kFloat);
  EXPECT_TRUE(torch::equal(nf4_dequantize(h->base, at::kFloat), before));
  Nf4Weight moved = h->base.to(at::Device(at::kCPU));
  EXPECT_EQ(moved.absmax2.scalar_type(), at::kFloat);
  EXPECT_EQ(moved.nbytes(), h->base.nbytes());
}

}  // namespace
}  // namespace kiln
