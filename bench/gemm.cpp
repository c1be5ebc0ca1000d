// Benchmark (not a test): kiln's fp32 CPU products (models/ops/cpu_gemm.h, OpenBLAS) against
// LibTorch's at::mm (MKL) on the bench/cpu.sh model's shapes, interleaved, best of ROUNDS.
//   make -C build kiln_bench_gemm && build/kiln_bench_gemm [ROUNDS (3)]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "models/ops/cpu_gemm.h"

namespace {

template <class F>
double ms_per_call(F f, int n = 10) {
  f();
  auto t = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count() / n * 1e3;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
  struct Case {
    const char* name;
    int64_t m, n, k;
    bool ta, tb;
  } cases[] = {{"mlp fwd x w^T", 2048, 1408, 512, false, true}, {"mlp dx = dy w", 2048, 512, 1408, false, false},
               {"mlp dw = dy^T x", 1408, 512, 2048, true, false}, {"attn x w^T", 2048, 512, 512, false, true},
               {"head x w^T", 2048, 4000, 512, false, true},     {"head dw", 4000, 512, 2048, true, false}};
  std::printf("kiln gemm: %s, %d threads\n%-16s %10s %10s %8s\n", kiln::cpu_gemm_name(), at::get_num_threads(), "case",
              "aten ms", "kiln ms", "speedup");
  for (const Case& c : cases) {
    at::Tensor a = c.ta ? at::randn({c.k, c.m}).t() : at::randn({c.m, c.k});
    at::Tensor b = c.tb ? at::randn({c.n, c.k}).t() : at::randn({c.k, c.n});
    at::Tensor out = at::empty({c.m, c.n});
    double aten = 1e30, kiln_ms = 1e30;
    for (int r = 0; r < rounds; ++r) {
      aten = std::min(aten, ms_per_call([&] { at::mm_out(out, a, b); }));
      kiln_ms = std::min(kiln_ms, ms_per_call([&] { kiln::gemm_into(out, a, b); }));
    }
    std::printf("%-16s %10.1f %10.1f %7.2fx  (%.0f / %.0f GFLOP/s)\n", c.name, aten, kiln_ms, aten / kiln_ms,
                2.0 * c.m * c.n * c.k / aten / 1e6, 2.0 * c.m * c.n * c.k / kiln_ms / 1e6);
  }
  return 0;
}
