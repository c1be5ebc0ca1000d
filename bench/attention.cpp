// Benchmark (not a test): kiln's CPU attention within documents (models/ops/cpu_attention.h)
// against what LibTorch offers for the same: SDPA's causal flash kernel with k and v repeated to
// every head (dense rows), and SDPA with the (B, 1, T, T) block-diagonal mask (packed rows).
// Forward and backward, fp32, interleaved, best of ROUNDS.
//   make -C build kiln_bench_attention && build/kiln_bench_attention [ROUNDS (3)]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "models/ops/cpu_attention.h"

namespace {

template <class F>
double ms_per_call(F f, int n = 5) {
  f();
  auto t = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count() / n * 1e3;
}

// Document starts of B rows of T tokens, each row cut into documents of `doc` tokens (0: whole).
std::vector<int32_t> offsets(int64_t B, int64_t T, int64_t doc) {
  std::vector<int32_t> cu;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < T; s += doc ? doc : T) cu.push_back(static_cast<int32_t>(b * T + s));
  cu.push_back(static_cast<int32_t>(B * T));
  return cu;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
  struct Case {
    const char* name;
    int64_t B, T, H, K, D, doc;
  } cases[] = {{"dense 4x512", 4, 512, 8, 4, 64, 0},
               {"packed 4x512/128", 4, 512, 8, 4, 64, 128},
               {"dense 2x1024", 2, 1024, 8, 4, 64, 0},
               {"dense 1x2048", 1, 2048, 8, 4, 64, 0},
               {"packed 1x4096/512", 1, 4096, 8, 4, 64, 512}};
  std::printf("kiln attention, %d threads; ms forward + backward per call\n%-20s %10s %10s %8s\n",
              at::get_num_threads(), "case", "sdpa ms", "kiln ms", "speedup");
  for (const Case& c : cases) {
    const int64_t N = c.B * c.T;
    at::Tensor q = at::randn({N, c.H, c.D}), k = at::randn({N, c.K, c.D}), v = at::randn({N, c.K, c.D});
    at::Tensor dout = at::randn({N, c.H, c.D});
    const std::vector<int32_t> cu = offsets(c.B, c.T, c.doc);
    at::Tensor cu_t = at::tensor(cu, at::kInt);
    at::Tensor mask;  // (B, 1, T, T) bool, packed only
    if (c.doc) {
      at::Tensor idx = at::arange(c.T) / c.doc;
      mask = idx.unsqueeze(1).eq(idx.unsqueeze(0)).logical_and(at::ones({c.T, c.T}, at::kBool).tril());
      mask = mask.view({1, 1, c.T, c.T}).expand({c.B, 1, c.T, c.T}).contiguous();
    }
    auto sdpa = [&] {
      at::Tensor qq = q.view({c.B, c.T, c.H, c.D}).transpose(1, 2).requires_grad_(false).clone().requires_grad_();
      at::Tensor kk = k.view({c.B, c.T, c.K, c.D}).transpose(1, 2).clone().requires_grad_();
      at::Tensor vv = v.view({c.B, c.T, c.K, c.D}).transpose(1, 2).clone().requires_grad_();
      at::Tensor kr = kk.repeat_interleave(c.H / c.K, 1), vr = vv.repeat_interleave(c.H / c.K, 1);
      at::Tensor o = mask.defined() ? at::scaled_dot_product_attention(qq, kr, vr, mask)
                                    : at::scaled_dot_product_attention(qq, kr, vr, {}, 0.0, true);
      o.backward(dout.view({c.B, c.T, c.H, c.D}).transpose(1, 2));
    };
    auto kiln_run = [&] {
      kiln::CpuAttentionForward f = kiln::cpu_varlen_attention_forward(q, k, v, cu_t);
      kiln::cpu_varlen_attention_backward(dout, q, k, v, f.out, f.lse, cu_t);
    };
    double a = 1e30, b = 1e30;
    for (int r = 0; r < rounds; ++r) {
      a = std::min(a, ms_per_call(sdpa));
      b = std::min(b, ms_per_call(kiln_run));
    }
    std::printf("%-20s %10.1f %10.1f %7.2fx\n", c.name, a, b, a / b);
  }
  return 0;
}
