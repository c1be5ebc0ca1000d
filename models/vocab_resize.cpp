// Vocabulary growth for embedding and head tensors (see vocab_resize.h).
#include "models/vocab_resize.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <functional>

#include "models/weight_source.h"
#include "base/error.h"

namespace kiln {
namespace {

constexpr double kCovarianceScale = 1e-9;  // transformers' epsilon on the covariance of the old rows
constexpr int64_t kPieceElements = int64_t{1} << 22;  // old rows read at a time for the statistics

// splitmix64 of the tensor's seed and the row: the generator seed of new row `row` of `name`.
uint64_t row_seed(uint64_t seed, const std::string& name, int64_t row) {
  uint64_t z = tensor_seed(seed, name) ^ (static_cast<uint64_t>(row) * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void check_init(const std::string& init) {
  if (init != "mean" && init != "mean_cov" && init != "zeros")
    user_error("model.vocab_init: '", init, "' is not one of mean | mean_cov | zeros");
}

// What new rows are drawn from: the old rows' mean (h) and, for mean_cov, the lower Cholesky
// factor of 1e-9 x their covariance (h, h), undefined when that is not positive definite.
struct RowStats {
  at::Tensor mean, chol;  // fp64
};

// `rows(r0, r1)`: old rows [r0, r1) as (r1 - r0, h). Two passes in pieces: mean, then covariance.
RowStats row_stats(int64_t old_rows, int64_t width, const std::string& init,
                   const std::function<at::Tensor(int64_t, int64_t)>& rows) {
  RowStats s;
  if (init == "zeros") return s;
  KILN_CHECK(old_rows > 0, "vocabulary growth: no old rows to take a mean of");
  const int64_t step = std::max<int64_t>(1, kPieceElements / std::max<int64_t>(1, width));
  at::Tensor sum = at::zeros({width}, at::kDouble);
  for (int64_t r = 0; r < old_rows; r += step)
    sum += rows(r, std::min(old_rows, r + step)).to(at::kDouble).sum(0);
  s.mean = sum / static_cast<double>(old_rows);
  if (init != "mean_cov") return s;
  at::Tensor cov = at::zeros({width, width}, at::kDouble);
  for (int64_t r = 0; r < old_rows; r += step) {
    at::Tensor c = rows(r, std::min(old_rows, r + step)).to(at::kDouble) - s.mean;  // (n, h)
    cov += at::matmul(c.t(), c);
  }
  cov /= static_cast<double>(old_rows);
  auto [factor, info] = at::linalg_cholesky_ex(cov * kCovarianceScale);
  if (info.item<int64_t>() == 0) s.chol = factor;
  return s;
}

// New rows [begin, end) (global row indices, all >= V_old) into `out` (end - begin, h) fp32.
void fill_new_rows(at::Tensor out, int64_t begin, const RowStats& s, const std::string& name,
                   const VocabResizeOptions& opt) {
  if (!s.mean.defined()) {
    out.zero_();
    return;
  }
  if (!s.chol.defined()) {
    out.copy_(s.mean.unsqueeze(0).expand_as(out));
    return;
  }
  const int64_t width = out.size(1);
  for (int64_t i = 0; i < out.size(0); ++i) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(row_seed(opt.seed, name, begin + i));
    at::Tensor z = at::randn({width}, gen, at::TensorOptions().dtype(at::kDouble));
    out[i].copy_(s.mean + at::mv(s.chol, z));
  }
}

void refuse_shrink(const std::string& name, int64_t new_rows, int64_t old_rows, const std::string& what) {
  user_error(what, ": tensor '", name, "' has ", old_rows, " rows, model.vocab_size gives ", new_rows,
             "; kiln extends vocabularies but never shrinks them (valid: model.vocab_size >= ", old_rows,
             ")");
}

class VocabGrowth : public WeightSource {
 public:
  VocabGrowth(std::unique_ptr<WeightSource> inner, std::map<std::string, std::vector<int64_t>> stored,
              VocabResizeOptions opt)
      : inner_(std::move(inner)), stored_(std::move(stored)), opt_(std::move(opt)) {
    check_init(opt_.init);
  }
  std::string describe() const override { return inner_->describe(); }

  at::Tensor read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end) override {
    auto it = stored_.find(name);
    // Only fewer rows of the same width grow; anything else is the wrapped source's to judge.
    if (!is_vocab_tensor(name) || it == stored_.end() || shape.size() != 2 || it->second.size() != 2 ||
        it->second[1] != shape[1] || it->second[0] >= shape[0])
      return inner_->read(name, shape, begin, end);
    const std::vector<int64_t>& old = it->second;
    const int64_t old_rows = old[0], width = shape[1];
    if (end <= begin) return at::empty({0}, at::kFloat);
    // The rows the range touches, assembled, then cut to the range.
    const int64_t r0 = begin / width, r1 = (end - 1) / width + 1;
    at::Tensor rows = at::empty({r1 - r0, width}, at::kFloat);
    const int64_t keep_end = std::min(r1, old_rows);
    if (keep_end > r0)
      rows.narrow(0, 0, keep_end - r0)
          .view({-1})
          .copy_(inner_->read(name, old, r0 * width, keep_end * width));
    const int64_t fresh = std::max(r0, old_rows);
    if (fresh < r1)
      fill_new_rows(rows.narrow(0, fresh - r0, r1 - fresh), fresh, stats(name, old), name, opt_);
    return rows.view({-1}).narrow(0, begin - r0 * width, end - begin).clone();
  }

 private:
  const RowStats& stats(const std::string& name, const std::vector<int64_t>& old) {
    auto it = stats_.find(name);
    if (it != stats_.end()) return it->second;
    const int64_t width = old[1];
    RowStats s = row_stats(old[0], width, opt_.init, [&](int64_t a, int64_t b) {
      return inner_->read(name, old, a * width, b * width).view({b - a, width});
    });
    return stats_.emplace(name, std::move(s)).first->second;
  }

  std::unique_ptr<WeightSource> inner_;
  std::map<std::string, std::vector<int64_t>> stored_;
  VocabResizeOptions opt_;
  std::map<std::string, RowStats> stats_;  // per grown tensor, computed on first use
};

}  // namespace

bool is_vocab_tensor(const std::string& name) {
  return name == "model.embed_tokens.weight" || name == "lm_head.weight";
}

at::Tensor resize_vocab_rows(const at::Tensor& old, int64_t new_rows, const std::string& name,
                             const VocabResizeOptions& opt, int64_t row_begin, int64_t row_end) {
  KILN_CHECK(old.dim() == 2, "resize_vocab_rows: '", name, "' must be 2-D, is ", old.dim(), "-D");
  const int64_t old_rows = old.size(0);
  if (new_rows < old_rows)
    user_error("model.vocab_size: ", new_rows, " rows for '", name, "' is fewer than the checkpoint's ",
               old_rows, "; kiln extends vocabularies but never shrinks them (valid: >= ", old_rows, ")");
  if (row_end < 0) row_end = new_rows;
  KILN_CHECK(0 <= row_begin && row_begin <= row_end && row_end <= new_rows, "resize_vocab_rows: rows [",
             row_begin, ", ", row_end, ") of ", new_rows);
  const std::vector<int64_t> old_shape = old.sizes().vec();
  const std::vector<int64_t> new_shape = {new_rows, old.size(1)};
  VocabGrowth source(tensors_source({{name, old}}, "resize_vocab_rows"), {{name, old_shape}}, opt);
  const int64_t w = old.size(1);
  return source.read(name, new_shape, row_begin * w, row_end * w).view({row_end - row_begin, w});
}

TensorShapes stored_vocab_shapes(const TensorShapes& model,
                                 const std::map<std::string, std::vector<int64_t>>& stored,
                                 const std::string& what) {
  TensorShapes out = model;
  for (auto& [name, shape] : out) {
    auto it = stored.find(name);
    if (!is_vocab_tensor(name) || it == stored.end() || shape.size() != 2 || it->second == shape) continue;
    const std::vector<int64_t>& s = it->second;
    if (s.size() != 2 || s[1] != shape[1]) continue;  // another width: the source's own check names it
    if (s[0] > shape[0]) refuse_shrink(name, shape[0], s[0], what);
    shape = s;
  }
  return out;
}

std::unique_ptr<WeightSource> vocab_growth_source(std::unique_ptr<WeightSource> inner,
                                                  std::map<std::string, std::vector<int64_t>> stored,
                                                  const VocabResizeOptions& opt) {
  return std::make_unique<VocabGrowth>(std::move(inner), std::move(stored), opt);
}

}  // namespace kiln
