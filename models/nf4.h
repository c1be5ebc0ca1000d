// NF4 (4-bit NormalFloat) storage of frozen base weights for QLoRA, in bitsandbytes' layout, so a
// kiln-quantized weight holds the same bytes as bitsandbytes' quantize_4bit(quant_type="nf4"):
//
//   - the weight, flattened row-major, is cut into blocks of 64 values; each block keeps its absmax
//     (fp32) and each value the index (0..15) of the nearest of the 16 NF4 levels to value/absmax;
//   - two indices per byte, element 2i in the high nibble and 2i+1 in the low nibble;
//   - double quantization (bitsandbytes' compress_statistics): the absmax vector minus its mean
//     (the offset) is quantized again with the signed 8-bit dynamic map in blocks of 256, leaving
//     one byte per 64 weights plus one fp32 per 16384 weights: about 0.516 bytes per parameter
//     (0.5625 without double quantization).
//
// An Nf4Weight is a plain struct, not a module parameter or buffer, so Module::to(dtype) never
// casts it; its own to(device) moves it and keeps every dtype. The compute dtype always comes from
// the activation (nf4_linear dequantizes to x's dtype), never from the quantized tensor.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace kiln {

struct Nf4Weight {
  static constexpr int64_t kScaleBlock = 256;  // block of the double quantization

  at::Tensor packed;           // (ceil(numel/2)) uint8, two 4-bit codes per byte
  at::Tensor absmax;           // (blocks) fp32; undefined when double-quantized
  at::Tensor absmax_q;         // (blocks) uint8 codes of absmax - offset in dynamic_map(); or undefined
  at::Tensor absmax2;          // (ceil(blocks/256)) fp32 absmax of each 256-block of absmax - offset
  float offset = 0;            // mean of absmax (double quantization only)
  std::vector<int64_t> shape;  // the weight's shape, e.g. (out, in)
  at::ScalarType dtype = at::ScalarType::Float;  // the dtype it was quantized from
  int64_t blocksize = 64;

  bool double_quant() const { return absmax_q.defined(); }
  int64_t numel() const;
  int64_t blocks() const;
  // Bytes held: packed codes plus scales (plus the 4-byte offset when double-quantized).
  int64_t nbytes() const;
  // The same weight on `device`; dtypes unchanged.
  Nf4Weight to(at::Device device) const;
};

// bitsandbytes' 16 NF4 levels (fp32, ascending, -1 .. 1) on the CPU.
at::Tensor nf4_code();
// bitsandbytes' signed 8-bit dynamic map, create_dynamic_map(signed=True): 256 fp32 values,
// ascending, -0.993 .. 1.
at::Tensor dynamic_map();

// Quantizes w (fp32, bf16 or fp16; any shape; CPU or CUDA) to NF4 with `blocksize` values per
// absmax (a power of two in [32, 4096]); double_quant compresses the absmax vector as well.
Nf4Weight nf4_quantize(const at::Tensor& w, bool double_quant, int64_t blocksize = 64);

// The per-block absmax as fp32 (undoing the double quantization when there is one).
at::Tensor nf4_absmax(const Nf4Weight& q);
// The weight in `dtype` with q.shape: level * absmax computed in fp32, then cast.
at::Tensor nf4_dequantize(const Nf4Weight& q, at::ScalarType dtype);

// y = x W^T + bias with W = nf4_dequantize(w, x.dtype): the frozen QLoRA base projection. Only x
// receives a gradient; the dequantized weight is not kept for backward but made again there, so
// one layer's full-precision weight lives only while its matmul runs.
at::Tensor nf4_linear(const at::Tensor& x, const Nf4Weight& w, const at::Tensor& bias = {});

// Blockwise 8-bit quantization with a sorted 256-entry code (the double quantization's step):
// per block of `blocksize`, absmax = max |x| (fp32) and code index nearest to x / absmax.
struct Blockwise8 {
  at::Tensor q;       // (n) uint8
  at::Tensor absmax;  // (ceil(n/blocksize)) fp32
};
Blockwise8 quantize_blockwise(const at::Tensor& x, const at::Tensor& code, int64_t blocksize);
at::Tensor dequantize_blockwise(const Blockwise8& b, const at::Tensor& code, int64_t blocksize);  // fp32

}  // namespace kiln
