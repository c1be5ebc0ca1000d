// NF4 quantization and dequantization with ATen ops (any device), in bitsandbytes' layout.
//
// Where bitsandbytes' reference arithmetic has a choice, kiln makes the same one so the stored
// codes agree bit for bit: x * (1 / absmax) (reciprocal first) for full blocks, x / absmax for a
// trailing partial block, the scaled value clamped to [-1, 1], and the code index by bucketing
// into the midpoints of adjacent levels (a value exactly on a midpoint takes the lower level).
#include "models/nf4.h"

#include <torch/autograd.h>
#include <torch/torch.h>

#include <cmath>

#include "base/error.h"

namespace kiln {
namespace {

// The 16 NF4 levels: the quantiles of N(0, 1) normalised to [-1, 1] with an exact zero, as
// bitsandbytes lists them (these literals are its fp32 values).
constexpr float kNf4Levels[16] = {-1.0f,
                                  -0.6961928009986877f,
                                  -0.5250730514526367f,
                                  -0.39491748809814453f,
                                  -0.28444138169288635f,
                                  -0.18477343022823334f,
                                  -0.09105003625154495f,
                                  0.0f,
                                  0.07958029955625534f,
                                  0.16093020141124725f,
                                  0.24611230194568634f,
                                  0.33791524171829224f,
                                  0.44070982933044434f,
                                  0.5626170039176941f,
                                  0.7229568362236023f,
                                  1.0f};

struct ScaledBlocks {
  at::Tensor absmax;  // (blocks) fp32
  at::Tensor scaled;  // (n) fp32 in [-1, 1]
};

// Per-block absmax of flat (n) fp32 and every value divided by its block's absmax.
ScaledBlocks scale_blocks(const at::Tensor& flat, int64_t blocksize) {
  const int64_t n = flat.numel(), rem = n % blocksize, full = n - rem;
  std::vector<at::Tensor> absmax, scaled;
  if (full > 0) {
    at::Tensor blocks = flat.narrow(0, 0, full).view({full / blocksize, blocksize});
    at::Tensor am = std::get<0>(blocks.abs().max(/*dim=*/1));
    at::Tensor inv = at::reciprocal(am.clamp_min(1e-38)).unsqueeze(1);
    scaled.push_back((blocks * inv).clamp(-1, 1).reshape({-1}));
    absmax.push_back(am);
  }
  if (rem > 0) {
    at::Tensor tail = flat.narrow(0, full, rem);
    at::Tensor am = tail.abs().max().clamp_min(1e-38);
    scaled.push_back((tail / am).clamp(-1, 1));
    absmax.push_back(am.reshape({1}));
  }
  return {at::cat(absmax), at::cat(scaled)};
}

// Index of the nearest code value (code sorted ascending); ties go to the lower one.
at::Tensor nearest_code(const at::Tensor& scaled, const at::Tensor& code) {
  const int64_t k = code.numel();
  at::Tensor mid = (code.narrow(0, 0, k - 1) + code.narrow(0, 1, k - 1)) / 2;
  return at::bucketize(scaled, mid, /*out_int32=*/true, /*right=*/false);
}

// values (n) fp32 times absmax of their block: (n) fp32.
at::Tensor apply_absmax(const at::Tensor& values, const at::Tensor& absmax, int64_t blocksize) {
  const int64_t n = values.numel(), blocks = absmax.numel();
  at::Tensor v = values;
  if (blocks * blocksize != n) v = at::constant_pad_nd(values, {0, blocks * blocksize - n}, 0);
  return (v.view({blocks, blocksize}) * absmax.unsqueeze(1)).reshape({-1}).narrow(0, 0, n);
}

void check_blocksize(int64_t blocksize) {
  KILN_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
             "NF4 block size must be a power of two in [32, 4096], got ", blocksize);
}

struct Nf4Holder : torch::CustomClassHolder {
  explicit Nf4Holder(Nf4Weight w) : weight(std::move(w)) {}
  Nf4Weight weight;
};

// y = x W^T; the bias is added outside, so autograd handles it as any tensor.
struct Nf4LinearFunction : public torch::autograd::Function<Nf4LinearFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<Nf4Holder> holder) {
    ctx->saved_data["w"] = c10::IValue::make_capsule(holder);
    return at::linear(x, nf4_dequantize(holder->weight, x.scalar_type()));  // W (out, in)
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto holder = c10::static_intrusive_pointer_cast<Nf4Holder>(ctx->saved_data["w"].toCapsule());
    const at::Tensor& g = grad_out[0];                                                      // (..., out)
    return {at::matmul(g, nf4_dequantize(holder->weight, g.scalar_type())), at::Tensor()};  // (..., in)
  }
};

}  // namespace

int64_t Nf4Weight::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

int64_t Nf4Weight::blocks() const { return (numel() + blocksize - 1) / blocksize; }

int64_t Nf4Weight::nbytes() const {
  auto bytes = [](const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : int64_t{0}; };
  return bytes(packed) + bytes(absmax) + bytes(absmax_q) + bytes(absmax2) +
         (double_quant() ? int64_t{sizeof(float)} : 0);
}

Nf4Weight Nf4Weight::to(at::Device device) const {
  Nf4Weight w = *this;
  for (at::Tensor* t : {&w.packed, &w.absmax, &w.absmax_q, &w.absmax2})
    if (t->defined()) *t = t->to(device);
  return w;
}

at::Tensor nf4_code() { return torch::tensor(at::ArrayRef<float>(kNf4Levels, 16), torch::kFloat32); }

// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent
// i = 0..6, 2^i fraction steps (midpoints of linspace(0.1, 1, 2^i + 1)) times 10^(i-6), with both
// signs; then 0 and 1; sorted. Computed with the same fp32 ops so the values agree bit for bit.
at::Tensor dynamic_map() {
  std::vector<at::Tensor> parts;
  for (int i = 0; i < 7; ++i) {
    at::Tensor b = torch::linspace(0.1, 1.0, (int64_t{1} << i) + 1, torch::kFloat32);
    at::Tensor means = (b.narrow(0, 0, b.numel() - 1) + b.narrow(0, 1, b.numel() - 1)) / 2.0;
    double scale = std::pow(10.0, i - 6);
    parts.push_back(means * scale);
    parts.push_back(means * (-scale));
  }
  parts.push_back(torch::tensor({0.0f, 1.0f}, torch::kFloat32));
  at::Tensor data = at::cat(parts);
  KILN_CHECK(data.numel() == 256, "dynamic map has ", data.numel(), " entries");
  return std::get<0>(data.sort());
}

Blockwise8 quantize_blockwise(const at::Tensor& x, const at::Tensor& code, int64_t blocksize) {
  KILN_CHECK(code.numel() == 256, "an 8-bit code has 256 values, got ", code.numel());
  ScaledBlocks s = scale_blocks(x.reshape({-1}).to(at::kFloat), blocksize);
  return {nearest_code(s.scaled, code.to(s.scaled.device(), at::kFloat)).to(at::kByte), s.absmax};
}

at::Tensor dequantize_blockwise(const Blockwise8& b, const at::Tensor& code, int64_t blocksize) {
  at::Tensor values = code.to(b.q.device(), at::kFloat).index_select(0, b.q.reshape({-1}).to(at::kInt));
  return apply_absmax(values, b.absmax, blocksize);
}

Nf4Weight nf4_quantize(const at::Tensor& w, bool double_quant, int64_t blocksize) {
  check_blocksize(blocksize);
  const at::ScalarType t = w.scalar_type();
  KILN_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, "NF4 quantizes fp32/bf16/fp16, got ",
             t);
  KILN_CHECK(w.numel() > 0, "NF4 of an empty tensor");
  Nf4Weight q;
  q.shape = w.sizes().vec();
  q.dtype = t;
  q.blocksize = blocksize;

  ScaledBlocks s = scale_blocks(w.detach().reshape({-1}).to(at::kFloat), blocksize);
  // An odd count is padded with a zero value (code 7, the zero level), as bitsandbytes pads.
  at::Tensor scaled = s.scaled;
  if (scaled.numel() % 2) scaled = at::constant_pad_nd(scaled, {0, 1}, 0);
  at::Tensor codes = nearest_code(scaled, nf4_code().to(w.device())).to(at::kByte);  // (n rounded up to even)
  at::Tensor pairs = codes.view({-1, 2});
  q.packed = pairs.select(1, 0) * 16 + pairs.select(1, 1);  // first of each pair in the high nibble

  if (double_quant) {
    q.offset = s.absmax.mean().item<float>();
    Blockwise8 b = quantize_blockwise(s.absmax - q.offset, dynamic_map(), Nf4Weight::kScaleBlock);
    q.absmax_q = b.q;
    q.absmax2 = b.absmax;
  } else {
    q.absmax = s.absmax;
  }
  return q;
}

at::Tensor nf4_absmax(const Nf4Weight& q) {
  if (!q.double_quant()) return q.absmax;
  return dequantize_blockwise({q.absmax_q, q.absmax2}, dynamic_map(), Nf4Weight::kScaleBlock) + q.offset;
}

at::Tensor nf4_dequantize(const Nf4Weight& q, at::ScalarType dtype) {
  KILN_CHECK(q.packed.defined(), "nf4_dequantize of an empty Nf4Weight");
  const at::Device dev = q.packed.device();
  // lut (256, 2): the two levels a packed byte holds, high nibble first.
  at::Tensor byte = torch::arange(256, torch::TensorOptions().dtype(at::kInt).device(dev));
  at::Tensor code = nf4_code().to(dev);
  at::Tensor lut =
      at::stack({code.index_select(0, byte.div(16, "floor")), code.index_select(0, byte.remainder(16))},
                /*dim=*/1);
  at::Tensor values = lut.index_select(0, q.packed.to(at::kInt)).reshape({-1}).narrow(0, 0, q.numel());
  return apply_absmax(values, nf4_absmax(q), q.blocksize).to(dtype).view(q.shape);
}

at::Tensor nf4_linear(const at::Tensor& x, const Nf4Weight& w, const at::Tensor& bias) {
  KILN_CHECK(w.shape.size() == 2 && x.size(-1) == w.shape[1], "nf4_linear: x (..., ", x.size(-1),
             ") against a weight of ", w.shape.size(), " dims");
  at::Tensor y = Nf4LinearFunction::apply(x, c10::make_intrusive<Nf4Holder>(w));
  return bias.defined() ? y + bias : y;
}

}  // namespace kiln
