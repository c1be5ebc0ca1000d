// ZeRO stage 3 (see zero3.h): per-unit shard groups, gathered just before use and released after.
#include "parallel/zero3.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>
#include <set>

#include "models/llama.h"
#include "parallel/communicator.h"
#include "trainer/error.h"

namespace kiln {

using UnitFn = std::function<at::Tensor(const at::Tensor&)>;

struct Zero3Optimizer::Impl {
  struct Param {
    std::string name;
    at::Tensor tensor;  // the model's tensor: empty, or a view of its group's `full`
    std::vector<int64_t> shape;
    int64_t numel = 0;
    int64_t offset = 0;  // in its group's flat space
    bool decay = false;  // weight decay on matrices only
  };
  struct Group {               // one unit's parameters
    std::vector<int> params;   // indices into Impl::params
    int64_t numel = 0;         // real elements
    int64_t shard = 0;         // S: elements per rank (padded)
    int64_t shard_offset = 0;  // where this group's shard starts in the rank's flat shard
    int refs = 0;              // gathered while > 0
    at::Tensor full;           // (dp * S) compute dtype, while gathered
  };

  Impl(Communicator& c, AdamWOptions h, bool keep) : dp(c), hyper(h), keep_gathered(keep) {}

  Communicator& dp;
  AdamWOptions hyper;
  bool keep_gathered;  // forward leaves units gathered for their backward (no second gather)
  std::vector<Param> params;
  std::vector<Group> groups;                                 // [unit]
  std::vector<std::vector<int>> unit_groups;                 // [unit] -> groups it reads (tied head: + 0)
  std::set<int64_t> prefetched;                              // units holding a reference taken ahead of use
  int64_t len = 0;                                           // this rank's shard elements (all groups)
  at::Tensor master, exp_avg, exp_avg_sq, decay_mask, grad;  // (len) fp32, on the state device
  at::Tensor compute;  // (len) the parameter shard in the model's dtype and on its device;
                       // aliases master when both match
  at::Tensor anchor;   // a leaf that requires grad, so every unit's backward runs
  int64_t peak = 0;
  std::vector<int64_t> between_units;  // resident bytes after each unit released (this step)

  // The model's compute options, read from its (possibly empty) tensors.
  at::TensorOptions model_options() const { return params.front().tensor.options(); }

  // (Re)builds the compute shard on the model's device in its dtype, once the trainer has
  // moved the model (model->to() after the optimizer was built). The fp32 state stays where
  // to() put it.
  void ensure_compute() {
    const at::TensorOptions opts = model_options();
    const at::ScalarType dtype = opts.dtype().toScalarType();
    if (compute.defined() && compute.device() == opts.device() && compute.scalar_type() == dtype) return;
    compute = master.to(opts.device(), dtype);  // master itself when device and dtype match
  }
  void move_state(const c10::Device& device) {
    for (at::Tensor* t : {&master, &exp_avg, &exp_avg_sq, &decay_mask, &grad})
      if (t->defined()) *t = t->to(device);
    compute = at::Tensor();  // rebuilt at the next gather (it may have aliased the old master)
  }
  void refresh_compute() {
    if (compute.defined() && !compute.is_same(master)) compute.copy_(master);
  }

  void gather(int g) {
    Group& G = groups[g];
    if (G.refs++ > 0) return;
    ensure_compute();
    G.full = at::empty({G.shard * dp.size()}, compute.options());
    dp.all_gather(compute.narrow(0, G.shard_offset, G.shard), G.full);
    for (int i : G.params) {
      Param& p = params[i];
      p.tensor.set_data(G.full.narrow(0, p.offset, p.numel).view(p.shape));
    }
    peak = std::max(peak, resident_bytes());
  }
  void release(int g) {
    Group& G = groups[g];
    KILN_CHECK(G.refs > 0, "ZeRO-3: release of group ", g, " that is not gathered");
    if (--G.refs > 0) return;
    for (int i : G.params) params[i].tensor.set_data(at::empty({0}, compute.options()));
    G.full = at::Tensor();
  }

  // Gathers `unit` (unless prefetched) and prefetches `next` (-1 or out of range: none).
  void acquire(int64_t unit, int64_t next) {
    if (prefetched.erase(unit) == 0)
      for (int g : unit_groups[unit]) gather(g);
    if (next >= 0 && next < static_cast<int64_t>(unit_groups.size()) && !prefetched.count(next)) {
      for (int g : unit_groups[next]) gather(g);
      prefetched.insert(next);
    }
  }
  void release_unit(int64_t unit) {
    for (int g : unit_groups[unit]) release(g);
  }
  void drop_prefetched() {
    for (int64_t u : prefetched) release_unit(u);
    prefetched.clear();
  }
  // Releases everything, e.g. units kept gathered by a forward whose backward never ran.
  void release_all() {
    prefetched.clear();
    for (size_t g = 0; g < groups.size(); ++g) {
      if (groups[g].refs == 0) continue;
      groups[g].refs = 1;
      release(static_cast<int>(g));
    }
  }

  // After a unit's backward: its parameters' gradients, reduce-scattered into the fp32 shard.
  void reduce_unit_grads(int64_t unit) {
    for (int g : unit_groups[unit]) {
      Group& G = groups[g];
      at::Tensor flat = at::zeros({G.shard * dp.size()}, compute.options());
      for (int i : G.params) {
        Param& p = params[i];
        const at::Tensor& pg = p.tensor.grad();
        if (pg.defined()) flat.narrow(0, p.offset, p.numel).copy_(pg.reshape({-1}));
        p.tensor.mutable_grad() = at::Tensor();
      }
      at::Tensor mine = at::empty({G.shard}, compute.options());
      dp.reduce_scatter(flat, mine);
      if (!grad.defined()) grad = at::zeros({len}, master.options());
      grad.narrow(0, G.shard_offset, G.shard).add_(mine.to(grad.device(), at::kFloat));
    }
  }

  int64_t resident_bytes() const {
    int64_t bytes = 0;
    for (const Param& p : params) bytes += p.tensor.numel() * p.tensor.element_size();
    return bytes + len * params.front().tensor.element_size();
  }

  // Rank r's part of parameter p: [a, b) in the parameter's own flat index (a >= b: none).
  std::pair<int64_t, int64_t> owned_range(const Param& p, const Group& G) const {
    const int64_t lo = G.shard * dp.rank(), hi = lo + G.shard;
    return {std::max(p.offset, lo) - p.offset, std::min(p.offset + p.numel, hi) - p.offset};
  }
  // Where element `i` of parameter p (owned by this rank) sits in the rank's flat shard.
  int64_t shard_index(const Param& p, const Group& G, int64_t i) const {
    return G.shard_offset + p.offset + i - G.shard * dp.rank();
  }
  const Group& group_of(int param) const {
    for (const Group& G : groups)
      for (int i : G.params)
        if (i == param) return G;
    KILN_CHECK(false, "ZeRO-3: parameter ", params[param].name, " in no group");
    return groups.front();
  }

  at::Tensor run_unit(const std::shared_ptr<Impl>& self, int64_t unit, const at::Tensor& x, const UnitFn& fn);
};

namespace {

struct UnitHolder : torch::CustomClassHolder {
  UnitHolder(std::shared_ptr<Zero3Optimizer::Impl> i, int64_t u, UnitFn f)
      : impl(std::move(i)), unit(u), fn(std::move(f)) {}
  std::shared_ptr<Zero3Optimizer::Impl> impl;
  int64_t unit;
  UnitFn fn;
};

// One unit under ZeRO-3: gather, run without activations, release; in backward gather,
// recompute, backpropagate, reduce-scatter the gradients, release.
struct Zero3UnitFunction : public torch::autograd::Function<Zero3UnitFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& anchor, c10::intrusive_ptr<UnitHolder> h) {
    ctx->saved_data["unit"] = c10::IValue::make_capsule(h);
    ctx->save_for_backward({x});
    h->impl->acquire(h->unit, h->unit + 1);
    at::Tensor y;
    {
      at::NoGradGuard no_grad;
      y = h->fn(x);
    }
    if (!h->impl->keep_gathered) h->impl->release_unit(h->unit);
    h->impl->between_units.push_back(h->impl->resident_bytes());
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto h = c10::static_intrusive_pointer_cast<UnitHolder>(ctx->saved_data["unit"].toCapsule());
    const at::Tensor x = ctx->get_saved_variables()[0];
    h->impl->acquire(h->unit, h->unit - 1);
    at::Tensor in = x.is_floating_point() ? x.detach().requires_grad_(x.requires_grad()) : x;
    {
      at::AutoGradMode grad_on(true);
      at::Tensor y = h->fn(in);
      torch::autograd::backward({y}, {grad_out[0]});
    }
    h->impl->reduce_unit_grads(h->unit);
    h->impl->release_unit(h->unit);
    if (h->impl->keep_gathered) h->impl->release_unit(h->unit);  // the forward's reference
    h->impl->between_units.push_back(h->impl->resident_bytes());
    at::Tensor gx = in.is_floating_point() && in.requires_grad() ? in.grad() : at::Tensor();
    return {gx, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor Zero3Optimizer::Impl::run_unit(const std::shared_ptr<Impl>& self, int64_t unit,
                                          const at::Tensor& x, const UnitFn& fn) {
  if (!at::GradMode::is_enabled()) {  // evaluation: gather, run, release
    acquire(unit, unit + 1);
    at::Tensor y = fn(x);
    release_unit(unit);
    if (unit + 1 == static_cast<int64_t>(unit_groups.size())) drop_prefetched();
    return y;
  }
  if (!anchor.defined()) anchor = at::zeros({}).requires_grad_(true);
  return Zero3UnitFunction::apply(x, anchor, c10::make_intrusive<UnitHolder>(self, unit, fn));
}

Zero3Optimizer::Zero3Optimizer(LlamaImpl& model, Communicator& dp, AdamWOptions hyper, bool keep_gathered)
    : model_(model), impl_(std::make_shared<Impl>(dp, hyper, keep_gathered)) {
  Impl& m = *impl_;
  const int64_t units = model.num_units();
  const int world = dp.size();
  // Trained parameters in model order; each belongs to the first unit that lists it.
  std::vector<std::pair<std::string, at::Tensor>> trained;
  for (const auto& item : model.named_parameters())
    if (item.value().requires_grad()) trained.emplace_back(item.key(), item.value());
  KILN_CHECK(!trained.empty(), "ZeRO-3: the model has no trained parameters");
  std::vector<int> unit_of(trained.size(), -1);
  m.groups.resize(units);
  for (int64_t u = 0; u < units; ++u) {
    for (const auto& [name, t] : model.unit_parameters(u)) {
      for (size_t i = 0; i < trained.size(); ++i) {
        if (unit_of[i] >= 0 || !trained[i].second.is_same(t)) continue;
        unit_of[i] = static_cast<int>(u);
      }
    }
  }
  std::vector<at::Tensor> master_parts, mask_parts;
  for (size_t i = 0; i < trained.size(); ++i) {
    KILN_CHECK(unit_of[i] >= 0, "ZeRO-3: parameter ", trained[i].first, " belongs to no unit");
    Impl::Group& G = m.groups[unit_of[i]];
    const at::Tensor& t = trained[i].second;
    m.params.push_back({trained[i].first, t, t.sizes().vec(), t.numel(), G.numel, t.dim() >= 2});
    G.params.push_back(static_cast<int>(m.params.size() - 1));
    G.numel += t.numel();
  }
  // Per group: the padded flat values; keep this rank's slice of S elements.
  for (Impl::Group& G : m.groups) {
    G.shard = (G.numel + world - 1) / world;
    G.shard_offset = m.len;
    m.len += G.shard;
    at::Tensor flat = at::zeros({G.shard * world}, at::kFloat);
    at::Tensor mask = at::zeros({G.shard * world}, at::kFloat);
    for (int i : G.params) {
      const Impl::Param& p = m.params[i];
      flat.narrow(0, p.offset, p.numel).copy_(p.tensor.detach().reshape({-1}).to(at::kFloat));
      if (p.decay) mask.narrow(0, p.offset, p.numel).fill_(1.0);
    }
    master_parts.push_back(flat.narrow(0, G.shard * dp.rank(), G.shard));
    mask_parts.push_back(mask.narrow(0, G.shard * dp.rank(), G.shard));
  }
  m.master = at::cat(master_parts).to(model.parameters().front().device());
  m.decay_mask = at::cat(mask_parts).to(m.master.device());
  m.exp_avg = at::zeros_like(m.master);
  m.exp_avg_sq = at::zeros_like(m.master);
  // A tied head reads the embedding (unit 0) as well.
  m.unit_groups.resize(units);
  for (int64_t u = 0; u < units; ++u) m.unit_groups[u] = {static_cast<int>(u)};
  if (!model.lm_head && model.stage().has_head && model.stage().has_embedding && units > 1)
    m.unit_groups[units - 1].push_back(0);
  // Release the model's copies: from here on they exist only while gathered.
  for (Impl::Param& p : m.params) p.tensor.set_data(at::empty({0}, p.tensor.options()));
  std::shared_ptr<Impl> impl = impl_;
  model.set_unit_runner([impl](int64_t unit, const at::Tensor& x, const UnitFn& fn) {
    return impl->run_unit(impl, unit, x, fn);
  });
}

Zero3Optimizer::~Zero3Optimizer() { model_.set_unit_runner(nullptr); }

void Zero3Optimizer::zero_grad() {
  Impl& m = *impl_;
  m.release_all();
  for (Impl::Param& p : m.params) p.tensor.mutable_grad() = at::Tensor();
  m.grad = at::Tensor();
  m.peak = m.resident_bytes();
  m.between_units.clear();
}

void Zero3Optimizer::reduce_gradients() {
  Impl& m = *impl_;
  m.drop_prefetched();
  for (size_t g = 0; g < m.groups.size(); ++g)
    KILN_CHECK(m.groups[g].refs == 0, "ZeRO-3: unit ", g, " still gathered after backward");
  if (!m.grad.defined()) m.grad = at::zeros({m.len}, m.master.options());
}

double Zero3Optimizer::grad_norm() {
  Impl& m = *impl_;
  KILN_CHECK(m.grad.defined(), "grad_norm before reduce_gradients");
  at::Tensor sq = m.grad.to(at::kDouble).pow(2).sum().reshape({1}).to(m.model_options().device());
  m.dp.all_reduce(sq);
  return std::sqrt(sq.item<double>());
}

void Zero3Optimizer::step(double lr, double grad_scale, int64_t step_count) {
  Impl& m = *impl_;
  KILN_CHECK(m.grad.defined(), "step before reduce_gradients");
  at::NoGradGuard no_grad;
  adamw_update(m.master, m.exp_avg, m.exp_avg_sq, m.grad, m.decay_mask, lr, grad_scale, step_count, m.hyper);
  m.refresh_compute();
  m.grad = at::Tensor();
}

std::vector<TensorSlice> Zero3Optimizer::state_slices() const {
  const Impl& m = *impl_;
  std::vector<TensorSlice> out;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const Impl::Param& p = m.params[i];
    const Impl::Group& G = m.group_of(static_cast<int>(i));
    const auto [a, b] = m.owned_range(p, G);
    if (a >= b) continue;
    const std::pair<const char*, const at::Tensor*> kinds[] = {
        {"master/", &m.master}, {"exp_avg/", &m.exp_avg}, {"exp_avg_sq/", &m.exp_avg_sq}};
    for (const auto& [prefix, buf] : kinds)
      out.push_back({prefix + p.name, p.shape, a, b,
                     buf->narrow(0, m.shard_index(p, G, a), b - a).to(at::kCPU).clone()});
  }
  return out;
}

void Zero3Optimizer::load_state(const std::vector<TensorSlice>& slices) {
  Impl& m = *impl_;
  const std::pair<const char*, at::Tensor*> kinds[] = {
      {"master/", &m.master}, {"exp_avg/", &m.exp_avg}, {"exp_avg_sq/", &m.exp_avg_sq}};
  for (size_t i = 0; i < m.params.size(); ++i) {
    const Impl::Param& p = m.params[i];
    const Impl::Group& G = m.group_of(static_cast<int>(i));
    const auto [a, b] = m.owned_range(p, G);
    if (a >= b) continue;
    for (const auto& [prefix, buf] : kinds) {
      const std::string name = prefix + p.name;
      int64_t covered = 0;
      for (const TensorSlice& s : slices) {
        if (s.name != name) continue;
        if (s.global_shape != p.shape)
          user_error("checkpoint tensor '", name, "' has shape ", at::IntArrayRef(s.global_shape),
                     ", the model needs ", at::IntArrayRef(p.shape));
        const int64_t lo = std::max(s.flat_begin, a), hi = std::min(s.flat_end, b);
        if (lo >= hi) continue;
        buf->narrow(0, m.shard_index(p, G, lo), hi - lo).copy_(s.data.narrow(0, lo - s.flat_begin, hi - lo));
        covered += hi - lo;
      }
      if (covered < b - a)
        user_error("checkpoint is missing part of '", name, "' (", covered, " of ", b - a,
                   " elements found)");
    }
  }
  m.refresh_compute();
}

std::vector<std::pair<std::string, at::Tensor>> Zero3Optimizer::gather_parameters() const {
  const Impl& m = *impl_;
  std::vector<at::Tensor> full(m.groups.size());
  for (size_t g = 0; g < m.groups.size(); ++g) {
    const Impl::Group& G = m.groups[g];
    // Gathered on the model's device (where collectives run), in fp32.
    full[g] = at::empty({G.shard * m.dp.size()}, m.master.options().device(m.model_options().device()));
    m.dp.all_gather(m.master.narrow(0, G.shard_offset, G.shard).to(full[g].device()), full[g]);
  }
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const Impl::Param& p = m.params[i];
    const Impl::Group& G = m.group_of(static_cast<int>(i));
    const at::Tensor& f = full[&G - m.groups.data()];
    out.emplace_back(p.name, f.narrow(0, p.offset, p.numel).view(p.shape).to(at::kCPU).clone());
  }
  return out;
}

void Zero3Optimizer::to(const c10::Device& device) { impl_->move_state(device); }
c10::Device Zero3Optimizer::state_device() const { return impl_->master.device(); }

int64_t Zero3Optimizer::resident_parameter_bytes() const { return impl_->resident_bytes(); }
int64_t Zero3Optimizer::peak_resident_parameter_bytes() const { return impl_->peak; }
std::vector<int64_t> Zero3Optimizer::resident_between_units() const { return impl_->between_units; }

}  // namespace kiln
