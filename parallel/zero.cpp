// ZeroOptimizer stages 0-2 (see zero.h): the trained parameters laid end to end in one flat
// fp32 space of n elements, padded to N = dp * S; rank r owns [r*S, (r+1)*S). Flat gradients
// and collectives live on the model's device, the fp32 state on the state device (zero.h).
#include "parallel/zero.h"

#include <ATen/ATen.h>

#include <cmath>

#include "models/llama.h"
#include "parallel/communicator.h"
#include "parallel/zero3.h"
#include "trainer/error.h"

namespace kiln {
namespace {

// A copy on the host, never an alias (checkpoints keep it while training goes on).
at::Tensor host_copy(const at::Tensor& t) {
  return t.to(at::kCPU, t.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

}  // namespace

struct ZeroOptimizer::Impl {
  struct Param {
    std::string name;
    at::Tensor tensor;   // the model's tensor (compute dtype)
    int64_t offset = 0;  // in the flat space
    int64_t numel = 0;
    bool decay = false;
  };
  Communicator& dp;
  AdamWOptions hyper;
  int stage;
  int64_t bucket_elems;
  std::vector<Param> params;
  int64_t n = 0;      // real elements
  int64_t shard = 0;  // S
  int64_t begin = 0;  // this rank's range in the flat space: [begin, begin + len)
  int64_t len = 0;
  at::Tensor master, exp_avg, exp_avg_sq, decay_mask;  // (len) fp32, on the state device
  at::Tensor grad;                                     // (len) fp32, reduced, on the state device

  Impl(Communicator& c, AdamWOptions h, int s, int64_t bucket_bytes)
      : dp(c), hyper(h), stage(s), bucket_elems(std::max<int64_t>(1, bucket_bytes / 4)) {}

  // Where collectives run: the model's tensors' device.
  c10::Device model_device() const {
    return params.empty() ? c10::Device(c10::kCPU) : params.front().tensor.device();
  }
  at::TensorOptions comm_options() const {
    return at::TensorOptions().dtype(at::kFloat).device(model_device());
  }

  // Full flat fp32 copy of the model's gradients (zeros where a grad is missing), padded to N,
  // on the model's device.
  at::Tensor flat_grads() const {
    at::Tensor flat = at::zeros({shard * dp.size()}, comm_options());
    for (const auto& p : params) {
      const at::Tensor& g = p.tensor.grad();
      if (g.defined()) flat.narrow(0, p.offset, p.numel).copy_(g.reshape(-1));
    }
    return flat;
  }

  // Writes flat values covering [0, N) into the model's tensors.
  void scatter_to_model(const at::Tensor& full) {
    at::NoGradGuard no_grad;
    for (auto& p : params) p.tensor.copy_(full.narrow(0, p.offset, p.numel).view_as(p.tensor));
  }

  // The full flat master on every rank (on the model's device when gathered).
  at::Tensor full_master() const {
    if (stage == 0 || dp.size() == 1) return master;
    at::Tensor full = at::empty({shard * dp.size()}, comm_options());
    dp.all_gather(master.to(model_device()), full);
    return full;
  }
};

ZeroOptimizer::ZeroOptimizer(LlamaImpl& model, Communicator& dp, int stage, int64_t bucket_bytes,
                             AdamWOptions hyper, bool zero3_keep_gathered)
    : impl_(std::make_unique<Impl>(dp, hyper, stage, bucket_bytes)), stage_(stage) {
  KILN_CHECK(stage >= 0 && stage <= 3, "ZeRO stage must be 0-3, got ", stage);
  if (stage == 3) {
    zero3_ = std::make_unique<Zero3Optimizer>(model, dp, hyper, zero3_keep_gathered);
    return;
  }
  Impl& m = *impl_;
  for (const auto& item : model.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    Impl::Param p{item.key(), item.value(), m.n, item.value().numel(), item.value().dim() >= 2};
    m.n += p.numel;
    m.params.push_back(p);
  }
  const int64_t world = dp.size();
  m.shard = (m.n + world - 1) / world;
  m.begin = stage == 0 ? 0 : m.shard * dp.rank();
  m.len = stage == 0 ? m.shard * world : m.shard;

  at::Tensor full = at::zeros({m.shard * world}, at::kFloat);
  at::Tensor mask = at::zeros({m.shard * world}, at::kFloat);
  for (const auto& p : m.params) {
    full.narrow(0, p.offset, p.numel).copy_(p.tensor.detach().reshape(-1).to(at::kFloat));
    if (p.decay) mask.narrow(0, p.offset, p.numel).fill_(1.0);
  }
  // The state starts on the model's device (the CPU when the trainer builds it).
  m.master = full.narrow(0, m.begin, m.len).clone().to(m.model_device());
  m.decay_mask = mask.narrow(0, m.begin, m.len).clone().to(m.model_device());
  m.exp_avg = at::zeros_like(m.master);
  m.exp_avg_sq = at::zeros_like(m.master);
}

ZeroOptimizer::~ZeroOptimizer() = default;

void ZeroOptimizer::zero_grad() {
  if (zero3_) return zero3_->zero_grad();
  for (auto& p : impl_->params) p.tensor.mutable_grad() = at::Tensor();
  impl_->grad = at::Tensor();
}

void ZeroOptimizer::reduce_gradients() {
  if (zero3_) return zero3_->reduce_gradients();
  Impl& m = *impl_;
  const int world = m.dp.size();
  at::Tensor flat = m.flat_grads();  // (N)
  if (world == 1) {
    m.grad = flat.to(m.master.device());
  } else if (stage_ < 2) {
    // Stage 0/1: all-reduce bucket by bucket, then keep what this rank updates.
    for (int64_t off = 0; off < flat.numel(); off += m.bucket_elems) {
      at::Tensor bucket = flat.narrow(0, off, std::min(m.bucket_elems, flat.numel() - off));
      m.dp.all_reduce(bucket);
    }
    m.grad = flat.narrow(0, m.begin, m.len)
                 .to(m.master.device(), at::kFloat, /*non_blocking=*/false, /*copy=*/true);
  } else {
    // Stage 2: reduce-scatter. Bucket k holds the k-th piece of every rank's shard, so each
    // rank receives the summed piece of its own shard.
    at::Tensor mine = at::empty({m.shard}, m.comm_options());
    at::Tensor by_rank = flat.view({world, m.shard});
    for (int64_t off = 0; off < m.shard; off += m.bucket_elems) {
      int64_t len = std::min(m.bucket_elems, m.shard - off);
      at::Tensor in = by_rank.narrow(1, off, len).contiguous().view(-1);  // (world * len)
      at::Tensor out = mine.narrow(0, off, len);
      m.dp.reduce_scatter(in, out);
    }
    m.grad = mine.to(m.master.device());
  }
  // The model's gradients are no longer needed: free them (the point of stage 2).
  if (stage_ >= 2)
    for (auto& p : m.params) p.tensor.mutable_grad() = at::Tensor();
}

double ZeroOptimizer::grad_norm() {
  if (zero3_) return zero3_->grad_norm();
  Impl& m = *impl_;
  KILN_CHECK(m.grad.defined(), "grad_norm before reduce_gradients");
  at::Tensor sq = m.grad.to(at::kDouble).pow(2).sum().reshape({1});
  if (stage_ >= 1 && m.dp.size() > 1) {
    sq = sq.to(m.model_device());
    m.dp.all_reduce(sq);
  }
  return std::sqrt(sq.item<double>());
}

void adamw_update(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                  const at::Tensor& decay_mask, double lr, double grad_scale, int64_t step,
                  const AdamWOptions& h) {
  at::NoGradGuard no_grad;
  at::Tensor g = grad_scale == 1.0 ? grad : grad * grad_scale;
  master.mul_(1.0 - lr * h.weight_decay * decay_mask);
  exp_avg.mul_(h.beta1).add_(g, 1.0 - h.beta1);
  exp_avg_sq.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
  at::Tensor denom = (exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(h.eps);
  master.addcdiv_(exp_avg, denom, -lr / bc1);
}

void ZeroOptimizer::step(double lr, double grad_scale) {
  if (zero3_) return zero3_->step(lr, grad_scale, ++steps_);
  Impl& m = *impl_;
  KILN_CHECK(m.grad.defined(), "step before reduce_gradients");
  at::NoGradGuard no_grad;
  ++steps_;
  adamw_update(m.master, m.exp_avg, m.exp_avg_sq, m.grad, m.decay_mask, lr, grad_scale, steps_, m.hyper);
  m.scatter_to_model(m.full_master());
  m.grad = at::Tensor();
}

std::vector<TensorSlice> ZeroOptimizer::state_slices() const {
  if (zero3_) return zero3_->state_slices();
  const Impl& m = *impl_;
  std::vector<TensorSlice> out;
  const int64_t end = m.begin + m.len;
  for (const auto& p : m.params) {
    int64_t a = std::max(p.offset, m.begin), b = std::min(p.offset + p.numel, end);
    if (a >= b) continue;
    std::vector<int64_t> shape = p.tensor.sizes().vec();
    const std::pair<const char*, const at::Tensor*> kinds[] = {
        {"master/", &m.master}, {"exp_avg/", &m.exp_avg}, {"exp_avg_sq/", &m.exp_avg_sq}};
    for (const auto& [prefix, buf] : kinds)
      out.push_back({prefix + p.name, shape, a - p.offset, b - p.offset,
                     host_copy(buf->narrow(0, a - m.begin, b - a))});
  }
  return out;
}

void ZeroOptimizer::load_state(const std::vector<TensorSlice>& slices, int64_t steps) {
  if (zero3_) {
    steps_ = steps;
    return zero3_->load_state(slices);
  }
  Impl& m = *impl_;
  const int64_t end = m.begin + m.len;
  const std::pair<const char*, at::Tensor*> kinds[] = {
      {"master/", &m.master}, {"exp_avg/", &m.exp_avg}, {"exp_avg_sq/", &m.exp_avg_sq}};
  for (const auto& p : m.params) {
    int64_t a = std::max(p.offset, m.begin), b = std::min(p.offset + p.numel, end);
    if (a >= b) continue;
    for (const auto& [prefix, buf] : kinds) {
      const std::string name = prefix + p.name;
      int64_t covered = 0;
      for (const auto& s : slices) {
        if (s.name != name) continue;
        if (s.global_shape != p.tensor.sizes().vec())
          user_error("checkpoint tensor '", name, "' has shape ", at::IntArrayRef(s.global_shape),
                     ", the model needs ", p.tensor.sizes());
        // Overlap of the slice with what this rank needs, both in the parameter's flat index.
        int64_t lo = std::max(s.flat_begin, a - p.offset), hi = std::min(s.flat_end, b - p.offset);
        if (lo >= hi) continue;
        buf->narrow(0, p.offset + lo - m.begin, hi - lo).copy_(s.data.narrow(0, lo - s.flat_begin, hi - lo));
        covered += hi - lo;
      }
      if (covered < b - a)
        user_error("checkpoint is missing part of '", name, "' (", covered, " of ", b - a,
                   " elements found)");
    }
  }
  steps_ = steps;
  m.scatter_to_model(m.full_master());
}

std::vector<std::pair<std::string, at::Tensor>> ZeroOptimizer::gather_parameters() const {
  if (zero3_) return zero3_->gather_parameters();
  const Impl& m = *impl_;
  at::Tensor full = m.full_master();
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : m.params)
    out.emplace_back(p.name, host_copy(full.narrow(0, p.offset, p.numel).view(p.tensor.sizes())));
  return out;
}

void ZeroOptimizer::to(const c10::Device& device) {
  if (zero3_) return zero3_->to(device);
  Impl& m = *impl_;
  for (at::Tensor* t : {&m.master, &m.exp_avg, &m.exp_avg_sq, &m.decay_mask, &m.grad})
    if (t->defined()) *t = t->to(device);
}

c10::Device ZeroOptimizer::state_device() const {
  return zero3_ ? zero3_->state_device() : impl_->master.device();
}

int64_t ZeroOptimizer::resident_parameter_bytes() const {
  if (zero3_) return zero3_->resident_parameter_bytes();
  int64_t bytes = 0;
  for (const auto& p : impl_->params) bytes += p.tensor.numel() * p.tensor.element_size();
  return bytes;
}

}  // namespace kiln
