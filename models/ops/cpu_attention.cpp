// Causal attention within documents on the CPU, fp32 (see cpu_attention.h). Shapes: N tokens,
// H query heads, K key/value heads (G = H / K query heads share one), D head dim. A document is
// the token range [s, s + L) of the flattened batch; its rows are numbered 0 .. L-1 within it.
#include "models/ops/cpu_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "base/error.h"
#include "models/ops/cpu_gemm.h"
#include "models/ops/cpu_math.h"

namespace kiln {
namespace {

// Query rows per tile: large enough for the products to run near the GEMM's speed, small enough
// that the wasted products beyond the diagonal (half a tile per tile row) stay a small share, and
// that a tile's scores (rows x document length) stay in the core's L2 cache for the softmax and
// the products that read them: up to kTileFloats of them, but never fewer than 16 rows.
constexpr int64_t kMaxTileRows = 128, kMinTileRows = 16, kTileFloats = int64_t{1} << 16;

int64_t tile_rows(int64_t len) {
  return std::max(kMinTileRows, std::min(kMaxTileRows, kTileFloats / std::max<int64_t>(len, 1)) / 16 * 16);
}

struct Shape {
  int64_t H = 0, K = 0, D = 0, G = 0;
  float scale = 0.f;
};

struct Doc {
  int64_t start = 0, len = 0;
};

// Runs tasks 0 .. count-1 on the intra-op threads, each taking the next task as it finishes one
// (their costs differ: a late tile sees more keys), with `scratch_floats` of per-thread scratch.
template <class F>
void run_tasks(int64_t count, int64_t scratch_floats, const F& run) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    std::vector<float> scratch(static_cast<size_t>(scratch_floats));
    for (int64_t t = next++; t < count; t = next++) run(t, scratch.data());
  });
}

std::vector<Doc> documents(const at::Tensor& cu_seqlens, int64_t N) {
  KILN_CHECK(cu_seqlens.defined() && cu_seqlens.device().is_cpu() && cu_seqlens.scalar_type() == at::kInt &&
                 cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 2,
             "cpu varlen attention: cu_seqlens must be (docs + 1) int32 on the CPU");
  at::Tensor cu = cu_seqlens.contiguous();
  const int32_t* c = cu.data_ptr<int32_t>();
  const int64_t n = cu.numel();
  KILN_CHECK(c[0] == 0 && c[n - 1] == N, "cpu varlen attention: cu_seqlens must run from 0 to ", N, ", got ", c[0],
             " .. ", c[n - 1]);
  std::vector<Doc> docs;
  for (int64_t d = 0; d + 1 < n; ++d) {
    KILN_CHECK(c[d + 1] >= c[d], "cpu varlen attention: cu_seqlens decreases at ", d + 1);
    if (c[d + 1] > c[d]) docs.push_back({c[d], c[d + 1] - c[d]});
  }
  return docs;
}

// The largest tile of any document: the scratch a thread needs for one (scores) buffer.
int64_t scratch_floats(const std::vector<Doc>& docs) {
  int64_t most = 0;
  for (const Doc& d : docs) most = std::max(most, tile_rows(d.len) * d.len);
  return most;
}

Shape check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  KILN_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "cpu varlen attention takes (N, heads, D) tensors");
  KILN_CHECK(q.size(0) == k.size(0) && k.sizes() == v.sizes() && q.size(2) == k.size(2) && k.size(1) > 0 &&
                 q.size(1) % k.size(1) == 0,
             "cpu varlen attention: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  for (const at::Tensor* t : {&q, &k, &v})
    KILN_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
               "cpu varlen attention: contiguous fp32 CPU tensors");
  Shape s;
  s.H = q.size(1), s.K = k.size(1), s.D = q.size(2), s.G = s.H / s.K;
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D)));
  return s;
}

// Scores of rows [r0, r1) against keys [0, r1) of the document at s, query head h, kv head h / G,
// scaled: an (m, r1) row-major block at S.
void scores(const float* q, const float* k, const Shape& sh, const Doc& doc, int64_t r0, int64_t r1, int64_t h,
            float* S) {
  const float* qt = q + ((doc.start + r0) * sh.H + h) * sh.D;
  const float* kd = k + (doc.start * sh.K + h / sh.G) * sh.D;
  sgemm(false, true, r1 - r0, r1, sh.D, sh.scale, qt, sh.H * sh.D, kd, sh.K * sh.D, 0.f, S, r1);
}

void forward_tile(const float* q, const float* k, const float* v, float* out, float* lse, const Shape& sh,
                  const Doc& doc, int64_t r0, int64_t r1, int64_t h, float* S) {
  const int64_t m = r1 - r0, n = r1;
  scores(q, k, sh, doc, r0, r1, h, S);
  for (int64_t i = 0; i < m; ++i) {
    float* row = S + i * n;
    const int64_t valid = r0 + i + 1;  // causal: keys 0 .. r0 + i
    float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < valid; ++j) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < valid; ++j) {
      row[j] = exp_clamped(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t j = 0; j < valid; ++j) row[j] *= inv;
    std::fill(row + valid, row + n, 0.f);
    lse[(doc.start + r0 + i) * sh.H + h] = mx + std::log(sum);
  }
  const float* vd = v + (doc.start * sh.K + h / sh.G) * sh.D;
  sgemm(false, false, m, sh.D, n, 1.f, S, n, vd, sh.K * sh.D, 0.f, out + ((doc.start + r0) * sh.H + h) * sh.D,
        sh.H * sh.D);
}

struct Saved {
  const float *q, *k, *v, *out, *lse, *dout;
  float *dq, *dk, *dv;
};

// One tile's share of the gradients: dq of its rows, and its sums into dk and dv of keys [0, r1).
// P and dP are scratch of (r1 - r0) x r1 floats at least.
void backward_tile(const Saved& a, const Shape& sh, const Doc& doc, int64_t r0, int64_t r1, int64_t h, float* P,
                   float* dP) {
  const int64_t m = r1 - r0, n = r1, HD = sh.H * sh.D, KD = sh.K * sh.D;
  const int64_t row0 = ((doc.start + r0) * sh.H + h) * sh.D;  // (token s + r0, head h)
  const int64_t kv0 = (doc.start * sh.K + h / sh.G) * sh.D;   // (token s, kv head)
  scores(a.q, a.k, sh, doc, r0, r1, h, P);
  for (int64_t i = 0; i < m; ++i) {
    float* row = P + i * n;
    const int64_t valid = r0 + i + 1;
    const float l = a.lse[(doc.start + r0 + i) * sh.H + h];
#pragma omp simd
    for (int64_t j = 0; j < valid; ++j) row[j] = exp_clamped(row[j] - l);
    std::fill(row + valid, row + n, 0.f);
  }
  sgemm(true, false, n, sh.D, m, 1.f, P, n, a.dout + row0, HD, 1.f, a.dv + kv0, KD);  // dv += P^T dO
  sgemm(false, true, m, n, sh.D, 1.f, a.dout + row0, HD, a.v + kv0, KD, 0.f, dP, n);  // dP = dO v^T
  for (int64_t i = 0; i < m; ++i) {
    const float* o = a.out + row0 + i * HD;
    const float* g = a.dout + row0 + i * HD;
    float delta = 0.f;  // rowsum(dO * O) = rowsum(P * dP)
#pragma omp simd reduction(+ : delta)
    for (int64_t d = 0; d < sh.D; ++d) delta += g[d] * o[d];
    const float* p = P + i * n;
    float* ds = dP + i * n;
    const int64_t valid = r0 + i + 1;
#pragma omp simd
    for (int64_t j = 0; j < valid; ++j) ds[j] = p[j] * (ds[j] - delta);
    std::fill(ds + valid, ds + n, 0.f);
  }
  sgemm(false, false, m, sh.D, n, sh.scale, dP, n, a.k + kv0, KD, 0.f, a.dq + row0, HD);  // dq = s dS k
  sgemm(true, false, n, sh.D, m, sh.scale, dP, n, a.q + row0, HD, 1.f, a.dk + kv0, KD);   // dk += s dS^T q
}

struct CpuVarlenFunction : public torch::autograd::Function<CpuVarlenFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& cu_seqlens) {
    CpuAttentionForward f = cpu_varlen_attention_forward(q, k, v, cu_seqlens);
    ctx->save_for_backward({q, k, v, f.out, f.lse, cu_seqlens});
    return f.out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    CpuAttentionGrads g = cpu_varlen_attention_backward(grad_out[0].contiguous(), s[0], s[1], s[2], s[3], s[4], s[5]);
    return {g.dq, g.dk, g.dv, at::Tensor()};
  }
};

}  // namespace

bool cpu_varlen_attention_supported(const c10::Device& device, at::ScalarType dtype) {
  return device.is_cpu() && dtype == at::kFloat && cpu_kernels_on();
}

CpuAttentionForward cpu_varlen_attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const at::Tensor& cu_seqlens) {
  const Shape sh = check_inputs(q, k, v);
  const std::vector<Doc> docs = documents(cu_seqlens, q.size(0));
  CpuAttentionForward f{at::empty_like(q), at::empty({q.size(0), sh.H}, q.options())};
  struct Task {
    int64_t doc, r0, h;
  };
  std::vector<Task> tasks;
  for (int64_t d = 0; d < static_cast<int64_t>(docs.size()); ++d)
    for (int64_t r0 = 0; r0 < docs[d].len; r0 += tile_rows(docs[d].len))
      for (int64_t h = 0; h < sh.H; ++h) tasks.push_back({d, r0, h});
  // Longest first (a tile's cost grows with its last row), so the threads finish together.
  auto end_of = [&](const Task& t) { return std::min(t.r0 + tile_rows(docs[t.doc].len), docs[t.doc].len); };
  std::stable_sort(tasks.begin(), tasks.end(), [&](const Task& a, const Task& b) { return end_of(a) > end_of(b); });
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *op = f.out.data_ptr<float>(), *lp = f.lse.data_ptr<float>();
  run_tasks(static_cast<int64_t>(tasks.size()), scratch_floats(docs), [&](int64_t t, float* S) {
    const Task& task = tasks[t];
    forward_tile(qp, kp, vp, op, lp, sh, docs[task.doc], task.r0, end_of(task), task.h, S);
  });
  return f;
}

CpuAttentionGrads cpu_varlen_attention_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                                const at::Tensor& cu_seqlens) {
  const Shape sh = check_inputs(q, k, v);
  KILN_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes() && grad_out.is_contiguous() &&
                 out.is_contiguous() && grad_out.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
             "cpu varlen attention backward: the output and its gradient must be contiguous fp32 ", q.sizes());
  KILN_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() && lse.dim() == 2 && lse.size(0) == q.size(0) &&
                 lse.size(1) == sh.H,
             "cpu varlen attention backward: log-sum-exp must be (N, H) fp32");
  const std::vector<Doc> docs = documents(cu_seqlens, q.size(0));
  CpuAttentionGrads g{at::empty_like(q), at::zeros_like(k), at::zeros_like(v)};
  // One task per (document, kv head): it alone adds into that document's dk and dv rows of the head.
  struct Task {
    int64_t doc, kv;
  };
  std::vector<Task> tasks;
  for (int64_t d = 0; d < static_cast<int64_t>(docs.size()); ++d)
    for (int64_t kv = 0; kv < sh.K; ++kv) tasks.push_back({d, kv});
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](const Task& a, const Task& b) { return docs[a.doc].len > docs[b.doc].len; });
  const Saved a{q.data_ptr<float>(),  k.data_ptr<float>(),    v.data_ptr<float>(),    out.data_ptr<float>(),
                lse.data_ptr<float>(), grad_out.data_ptr<float>(), g.dq.data_ptr<float>(), g.dk.data_ptr<float>(),
                g.dv.data_ptr<float>()};
  const int64_t tile = scratch_floats(docs);
  run_tasks(static_cast<int64_t>(tasks.size()), 2 * tile, [&](int64_t t, float* scratch) {
    const Doc& doc = docs[tasks[t].doc];
    const int64_t rows = tile_rows(doc.len);
    for (int64_t h = tasks[t].kv * sh.G; h < (tasks[t].kv + 1) * sh.G; ++h)
      for (int64_t r0 = 0; r0 < doc.len; r0 += rows)
        backward_tile(a, sh, doc, r0, std::min(r0 + rows, doc.len), h, scratch, scratch + tile);
  });
  return g;
}

at::Tensor cpu_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens) {
  return CpuVarlenFunction::apply(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens);
}

}  // namespace kiln
