// ZeroOptimizer, stages 0-3 (see zero.h). Shapes: per unit group G, S = ceil(numel / dp) and the
// group's padded flat space is dp * S; the rank keeps [keep_begin, keep_begin + keep_len) of it
// (stage 0: all of it, else its partition [r*S, (r+1)*S)), and its fp32 state is those kept
// ranges of every group laid end to end ("local" space).
#include "parallel/zero.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "models/ops/fused_adamw.h"
#include "models/recompute.h"
#include "models/unit_chain.h"
#include "models/weight_source.h"
#include "parallel/communicator.h"
#include "parallel/grad_hooks.h"
#include "base/error.h"

namespace kiln {
namespace {

// Serves "master/NAME" (and the moments) from slices in memory.
class SlicesSource : public WeightSource {
 public:
  explicit SlicesSource(const std::vector<TensorSlice>& slices) {
    for (const TensorSlice& s : slices) by_name_[s.name].push_back(&s);
  }
  std::string describe() const override { return "optimizer state slices"; }
  at::Tensor read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end) override {
    at::Tensor out = at::empty({end - begin}, at::kFloat);
    auto it = by_name_.find(name);
    int64_t covered = 0;
    if (it != by_name_.end()) {
      for (const TensorSlice* s : it->second)
        if (s->global_shape != shape)
          user_error("checkpoint tensor '", name, "' has shape ", at::IntArrayRef(s->global_shape),
                     ", the model needs ", at::IntArrayRef(shape));
      covered = fill_range_from_slices(it->second, shape, begin, end, out);
    }
    if (covered < end - begin)
      user_error("checkpoint is missing part of '", name, "' (", covered, " of ", end - begin,
                 " elements found)");
    return out;
  }

 private:
  std::map<std::string, std::vector<const TensorSlice*>> by_name_;
};

}  // namespace

struct ZeroOptimizer::Impl {
  struct Param {
    std::string name;
    at::Tensor tensor;  // the model's tensor (stage 3: empty, or a view of its group's `full`)
    std::vector<int64_t> shape;
    int64_t numel = 0;
    int64_t offset = 0;  // in its group's flat space
    bool decay = false;  // weight decay on matrices only
  };
  struct Group {              // one unit's parameters
    std::vector<int> params;  // indices into params
    int64_t numel = 0;        // real elements
    int64_t shard = 0;        // S
    int64_t keep_begin = 0;   // what this rank keeps, in the group's flat space
    int64_t keep_len = 0;
    int64_t local = 0;  // where the kept range starts in the rank's local state
    int refs = 0;       // stage 3: gathered while > 0
    at::Tensor full;    // stage 3: (dp * S) compute dtype, while gathered
  };

  Impl(Communicator& c, int s, int64_t bucket_bytes, AdamWOptions h, bool keep)
      : dp(c), stage(s), bucket_elems(std::max<int64_t>(1, bucket_bytes / 4)), hyper(h), keep_gathered(keep) {}

  Communicator& dp;
  int stage;
  int64_t bucket_elems;
  AdamWOptions hyper;
  bool keep_gathered;  // stage 3: forward leaves units gathered for their backward
  int64_t steps = 0;
  std::vector<Param> params;
  std::vector<Group> groups;                 // [unit]
  std::vector<std::vector<int>> unit_groups;  // [unit] -> groups it reads
  std::set<int64_t> prefetched;              // stage 3: units holding a reference taken ahead of use
  int64_t len = 0;                           // local elements
  at::Tensor master, exp_avg, exp_avg_sq, decay_mask, grad;  // (len) fp32, on the state device
  at::Tensor lr_mask;  // (len) fp32 learning-rate multipliers (AdamWOptions::lr_scale); undefined = all 1
  at::Tensor compute;  // stage 3: (len) the kept parameters in the model's dtype and device
  int64_t peak = 0;
  std::vector<int64_t> between_units;
  UnitChain* model = nullptr;  // stage 3: the chain whose unit runner this optimizer installed
  Communicator* norm_group = nullptr;        // tensor parallel: the squared norm summed over it too
  std::map<std::string, double> norm_weight;  // parameter -> weight of its squared norm (tp replicas)
  std::vector<int> group_of_param;            // [param] -> its group
  std::vector<char> arrived;                  // stage 2: [param] its gradient of this backward is in
  std::vector<int64_t> waiting;               // stage 2: [group] parameters not arrived yet
  std::vector<at::Tensor> pending;            // stage 2: [group] its flat gradient until reduced
  int64_t grad_peak = 0;                      // gradient bytes, the most held at once since zero_grad()

  // ---- layout ---------------------------------------------------------------------------------

  void build_layout(UnitChain& model) {
    const int64_t units = model.num_units();
    std::vector<std::pair<std::string, at::Tensor>> trained;
    for (const auto& [name, t] : model.chain_parameters())
      if (t.requires_grad()) trained.emplace_back(name, t);
    KILN_CHECK(!trained.empty(), "ZeRO: the model has no trained parameters");
    std::vector<int> unit_of(trained.size(), -1);
    for (int64_t u = 0; u < units; ++u)
      for (const auto& np : model.unit_parameters(u))
        for (size_t i = 0; i < trained.size(); ++i)
          if (unit_of[i] < 0 && trained[i].second.is_same(np.second)) unit_of[i] = static_cast<int>(u);
    groups.resize(units);
    for (size_t i = 0; i < trained.size(); ++i) {
      KILN_CHECK(unit_of[i] >= 0, "ZeRO: parameter ", trained[i].first, " belongs to no unit");
      Group& G = groups[unit_of[i]];
      const at::Tensor& t = trained[i].second;
      params.push_back({trained[i].first, t, t.sizes().vec(), t.numel(), G.numel, t.dim() >= 2});
      G.params.push_back(static_cast<int>(params.size() - 1));
      group_of_param.push_back(unit_of[i]);
      G.numel += t.numel();
    }
    const int world = dp.size();
    for (Group& G : groups) {
      G.shard = (G.numel + world - 1) / world;
      G.keep_begin = stage == 0 ? 0 : G.shard * dp.rank();
      G.keep_len = stage == 0 ? G.shard * world : G.shard;
      G.local = len;
      len += G.keep_len;
    }
    unit_groups.resize(units);
    for (int64_t u = 0; u < units; ++u) {
      unit_groups[u] = {static_cast<int>(u)};
      for (int64_t r : model.unit_reads(u)) unit_groups[u].push_back(static_cast<int>(r));
    }
  }

  // AdamWOptions::frozen_leading of p (0: none held fixed).
  int64_t frozen_leading(const Param& p) const {
    auto it = hyper.frozen_leading.find(p.name);
    return it == hyper.frozen_leading.end() ? 0 : std::min(it->second, p.numel);
  }
  // The part of parameter p inside [lo, hi) of its group's flat space, in p's own flat index.
  static std::pair<int64_t, int64_t> part(const Param& p, int64_t lo, int64_t hi) {
    return {std::max(p.offset, lo) - p.offset, std::min(p.offset + p.numel, hi) - p.offset};
  }
  std::pair<int64_t, int64_t> kept(const Param& p, const Group& G) const {
    return part(p, G.keep_begin, G.keep_begin + G.keep_len);
  }
  // This rank's partition (what it saves), stage 0 included.
  std::pair<int64_t, int64_t> partition(const Param& p, const Group& G) const {
    return part(p, G.shard * dp.rank(), G.shard * (dp.rank() + 1));
  }
  // Where element i of parameter p sits in the local state.
  int64_t local_index(const Param& p, const Group& G, int64_t i) const {
    return G.local + p.offset + i - G.keep_begin;
  }
  const Group& group_of(int param) const {
    for (const Group& G : groups)
      for (int i : G.params)
        if (i == param) return G;
    KILN_CHECK(false, "ZeRO: parameter ", params[param].name, " in no group");
    return groups.front();
  }

  // Fills `buf` (local space) from `source` under `prefix` for every kept range.
  void read_kept(WeightSource& source, const std::string& prefix, at::Tensor& buf) {
    for (const Group& G : groups)
      for (int i : G.params) {
        const Param& p = params[i];
        const auto [a, b] = kept(p, G);
        if (a < b) buf.narrow(0, local_index(p, G, a), b - a).copy_(source.read(prefix + p.name, p.shape, a, b));
      }
  }

  void init_state(WeightSource* source) {
    master = at::zeros({len}, at::kFloat);
    decay_mask = at::zeros({len}, at::kFloat);
    for (const Group& G : groups)
      for (int i : G.params) {
        const Param& p = params[i];
        const auto [a, b] = kept(p, G);
        if (a >= b) continue;
        if (p.decay) decay_mask.narrow(0, local_index(p, G, a), b - a).fill_(1.0);
        if (const int64_t lead = frozen_leading(p); a < lead)  // held-fixed rows: no decay
          decay_mask.narrow(0, local_index(p, G, a), std::min(b, lead) - a).zero_();
        if (auto it = hyper.lr_scale.find(p.name); it != hyper.lr_scale.end()) {
          if (!lr_mask.defined()) lr_mask = at::ones({len}, at::kFloat);
          lr_mask.narrow(0, local_index(p, G, a), b - a).fill_(it->second);
        }
        if (source) continue;  // read below
        master.narrow(0, local_index(p, G, a), b - a)
            .copy_(p.tensor.detach().reshape({-1}).narrow(0, a, b - a).to(at::kCPU, at::kFloat));
      }
    if (source) {
      at::NoGradGuard no_grad;
      if (stage == 3) {
        read_kept(*source, "", master);
      } else {
        // Every rank holds the whole model in stages 0-2: read it tensor by tensor.
        for (Param& p : params) p.tensor.set_data(source->read_full(p.name, p.shape));
        for (const Group& G : groups)
          for (int i : G.params) {
            const Param& p = params[i];
            const auto [a, b] = kept(p, G);
            if (a < b) master.narrow(0, local_index(p, G, a), b - a).copy_(p.tensor.reshape({-1}).narrow(0, a, b - a));
          }
      }
    }
    exp_avg = at::zeros_like(master);
    exp_avg_sq = at::zeros_like(master);
  }

  // ---- devices --------------------------------------------------------------------------------

  // The model's compute options, read from its (possibly empty) tensors.
  at::TensorOptions model_options() const { return params.front().tensor.options(); }
  c10::Device model_device() const { return params.front().tensor.device(); }
  at::TensorOptions comm_options() const { return at::TensorOptions().dtype(at::kFloat).device(model_device()); }

  void move_state(const c10::Device& device) {
    for (at::Tensor* t : {&master, &exp_avg, &exp_avg_sq, &decay_mask, &grad, &lr_mask})
      if (t->defined()) *t = t->to(device);
    compute = at::Tensor();  // rebuilt at the next gather (it may have aliased the old master)
  }
  // Stage 3: the kept parameters on the model's device in its dtype (aliases master when both
  // match), rebuilt once the trainer has moved the model.
  void ensure_compute() {
    const at::TensorOptions opts = model_options();
    const at::ScalarType dtype = opts.dtype().toScalarType();
    if (compute.defined() && compute.device() == opts.device() && compute.scalar_type() == dtype) return;
    compute = master.to(opts.device(), dtype);
  }
  void refresh_compute() {
    if (compute.defined() && !compute.is_same(master)) compute.copy_(master);
  }

  // ---- stages 0-2: the model's tensors from the state -----------------------------------------

  void write_model() {
    at::NoGradGuard no_grad;
    for (size_t g = 0; g < groups.size(); ++g) {
      const Group& G = groups[g];
      at::Tensor full;  // the group's flat values on the model's device, compute dtype
      if (stage == 0 || dp.size() == 1) {
        full = master.narrow(0, G.local, G.keep_len);
      } else {
        full = at::empty({G.shard * dp.size()}, model_options());
        dp.all_gather(master.narrow(0, G.local, G.keep_len).to(model_device(), model_options().dtype().toScalarType()),
                      full);
      }
      for (int i : G.params) {
        Param& p = params[i];
        p.tensor.copy_(full.narrow(0, p.offset, p.numel).view(p.shape));
      }
    }
  }

  // Flat fp32 gradients of group G (zeros where a gradient is missing), padded, on the model's
  // device.
  at::Tensor flat_grads(const Group& G) {
    at::Tensor flat = at::zeros({G.shard * dp.size()}, comm_options());
    note_grad_bytes(nbytes(flat));  // the flat copy beside the gradients it is made from
    copy_grads(G, flat);
    return flat;
  }
  // Group G's gradients laid out at their offsets in the zeroed `dst` (held-fixed rows zeroed).
  void copy_grads(const Group& G, at::Tensor dst) {
    for (int i : G.params) {
      Param& p = params[i];
      const at::Tensor& g = p.tensor.grad();
      if (g.defined()) dst.narrow(0, p.offset, p.numel).copy_(g.reshape({-1}));
      if (const int64_t lead = frozen_leading(p)) dst.narrow(0, p.offset, lead).zero_();
    }
  }

  // Stages 0 and 1, after the last micro-batch: group G's gradients all-reduced in buckets, this
  // rank's kept range copied into the zeroed `grad`.
  void reduce_group(const Group& G) {
    at::Tensor out = grad.narrow(0, G.local, G.keep_len);
    if (dp.size() == 1) {  // nothing to reduce: each gradient straight into the zeroed `grad`
      copy_grads(G, out);
      return;
    }
    at::Tensor flat = flat_grads(G);
    for (int64_t off = 0; off < flat.numel(); off += bucket_elems) {
      at::Tensor bucket = flat.narrow(0, off, std::min(bucket_elems, flat.numel() - off));
      dp.all_reduce(bucket);
    }
    out.copy_(flat.narrow(0, G.keep_begin, G.keep_len));
  }

  // ---- stage 2: reduce-scatter during backward; gradient memory (every stage) ------------------

  static int64_t nbytes(const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; }

  // Gradient bytes alive now: the parameters' .grad tensors, the reduced gradient `grad`, the
  // units' flat gradients waiting to be reduced (stage 2) and `extra` (a copy being reduced), kept
  // as the peak. Called wherever gradient memory grows: after every accumulation into a .grad
  // (the hook) and inside every reduction.
  void note_grad_bytes(int64_t extra = 0) {
    int64_t bytes = extra + nbytes(grad);
    for (const at::Tensor& f : pending) bytes += nbytes(f);
    for (const Param& p : params) bytes += nbytes(p.tensor.grad());  // a tied weight is one parameter
    grad_peak = std::max(grad_peak, bytes);
  }

  // Autograd has accumulated parameter i's gradient into its .grad. Under stage 2 it is added at
  // once into its unit's flat gradient (fp32, padded to dp * S) and the .grad freed; once every
  // parameter of the unit has arrived, the flat gradient is reduce-scattered into this rank's fp32
  // partition in buckets of bucket_mb and freed. So a rank holds its partition, the flat gradient
  // of the unit in backward and one parameter's .grad, not the model's gradients. Every
  // micro-batch is reduced this way, accumulating in the partition: summing the micro-batches
  // locally first would hold every unit's full gradient until the last one, the memory stage 2
  // exists to save (the price: one reduce-scatter per micro-batch instead of per step). All ranks
  // run the same graph, so they complete the same units in the same order and the collectives
  // match.
  void on_grad_accumulated(int i) {
    note_grad_bytes();
    if (stage != 2) return;
    const int g = group_of_param[i];
    const Group& G = groups[g];
    Param& p = params[i];
    if (!pending[g].defined()) {
      pending[g] = at::zeros({G.shard * dp.size()}, comm_options());
      note_grad_bytes();
    }
    pending[g].narrow(0, p.offset, p.numel).add_(p.tensor.grad().reshape({-1}));
    p.tensor.mutable_grad() = at::Tensor();
    if (arrived[i]) return;  // a second accumulation in one backward (a tied weight): already counted
    arrived[i] = 1;
    if (--waiting[g] == 0) reduce_pending(g);
  }
  // Reduce-scatters unit g's flat gradient into the partition (adding) and frees it. Bucket k
  // holds the k-th piece of every rank's partition, so each rank receives the summed piece of its
  // own and adds it in.
  void reduce_pending(int g) {
    const Group& G = groups[g];
    at::Tensor flat = std::move(pending[g]);
    pending[g] = at::Tensor();
    for (int i : G.params) {
      if (const int64_t lead = frozen_leading(params[i])) flat.narrow(0, params[i].offset, lead).zero_();
      arrived[i] = 0;
    }
    waiting[g] = static_cast<int64_t>(G.params.size());
    if (!grad.defined()) grad = at::zeros({len}, master.options());
    at::Tensor out = grad.narrow(0, G.local, G.keep_len);
    const int world = dp.size();
    if (world == 1) {
      out.add_(flat.to(out.device()));
      return;
    }
    // A bucket is bucket_mb in all: n elements of each of the `world` partitions.
    const int64_t step = std::max<int64_t>(1, bucket_elems / world);
    at::Tensor by_rank = flat.view({world, G.shard});
    for (int64_t off = 0; off < G.shard; off += step) {
      const int64_t n = std::min(step, G.shard - off);
      at::Tensor in = by_rank.narrow(1, off, n).contiguous().view({-1});
      at::Tensor piece = at::empty({n}, comm_options());
      if (off == 0) note_grad_bytes(nbytes(flat) + (in.is_alias_of(flat) ? 0 : nbytes(in)) + nbytes(piece));
      dp.reduce_scatter(in, piece);
      out.narrow(0, off, n).add_(piece.to(out.device()));
    }
  }
  void reset_arrivals() {
    arrived.assign(params.size(), 0);
    waiting.resize(groups.size());
    for (size_t g = 0; g < groups.size(); ++g) waiting[g] = static_cast<int64_t>(groups[g].params.size());
    pending.assign(groups.size(), at::Tensor());
  }
  void install_grad_hooks(const std::shared_ptr<Impl>& self) {
    reset_arrivals();
    std::weak_ptr<Impl> weak = self;
    for (size_t i = 0; i < params.size(); ++i)
      set_grad_accumulated_hook(params[i].tensor, [weak, i] {
        if (auto m = weak.lock()) m->on_grad_accumulated(static_cast<int>(i));
      });
  }

  // ---- stage 3: gather, release, reduce per unit ----------------------------------------------

  int64_t resident_bytes() const {
    int64_t bytes = 0;
    for (const Param& p : params) bytes += p.tensor.numel() * p.tensor.element_size();
    if (stage == 3) bytes += len * params.front().tensor.element_size();
    return bytes;
  }

  void gather(int g) {
    Group& G = groups[g];
    if (G.refs++ > 0) return;
    ensure_compute();
    G.full = at::empty({G.shard * dp.size()}, compute.options());
    dp.all_gather(compute.narrow(0, G.local, G.shard), G.full);
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
  // Gathers `unit` (unless prefetched) and prefetches `next` (out of range: none).
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
  void release_all() {
    prefetched.clear();
    for (size_t g = 0; g < groups.size(); ++g) {
      if (groups[g].refs == 0) continue;
      groups[g].refs = 1;
      release(static_cast<int>(g));
    }
  }
  // After a unit's backward: its gradients reduce-scattered into the fp32 partition
  // (accumulating over micro-batches).
  void reduce_unit_grads(int64_t unit) {
    for (int g : unit_groups[unit]) {
      const Group& G = groups[g];
      at::Tensor flat = at::zeros({G.shard * dp.size()}, compute.options());
      for (int i : G.params) {
        Param& p = params[i];
        const at::Tensor& pg = p.tensor.grad();
        if (pg.defined()) flat.narrow(0, p.offset, p.numel).copy_(pg.reshape({-1}));
        if (const int64_t lead = frozen_leading(p)) flat.narrow(0, p.offset, lead).zero_();
        p.tensor.mutable_grad() = at::Tensor();
      }
      at::Tensor mine = at::empty({G.shard}, compute.options());
      dp.reduce_scatter(flat, mine);
      if (!grad.defined()) grad = at::zeros({len}, master.options());
      grad.narrow(0, G.local, G.shard).add_(mine.to(grad.device(), at::kFloat));
    }
  }

  at::Tensor run_unit(const std::shared_ptr<Impl>& self, int64_t unit, const at::Tensor& x, const UnitFn& fn) {
    const int64_t last = static_cast<int64_t>(unit_groups.size()) - 1;
    if (!at::GradMode::is_enabled()) {  // evaluation: gather, run, release
      acquire(unit, unit + 1);
      at::Tensor y = fn(x);
      release_unit(unit);
      if (unit == last) drop_prefetched();
      return y;
    }
    auto hooks = std::make_shared<RecomputeHooks>();
    std::weak_ptr<Impl> weak = self;
    hooks->always_backward = true;
    hooks->before_forward = [weak, unit] { weak.lock()->acquire(unit, unit + 1); };
    hooks->after_forward = [weak, unit] {
      auto m = weak.lock();
      if (!m->keep_gathered) m->release_unit(unit);
      m->between_units.push_back(m->resident_bytes());
    };
    hooks->before_backward = [weak, unit] { weak.lock()->acquire(unit, unit - 1); };
    hooks->after_backward = [weak, unit] {
      auto m = weak.lock();
      m->reduce_unit_grads(unit);
      m->release_unit(unit);
      if (m->keep_gathered) m->release_unit(unit);  // the forward's reference
      m->between_units.push_back(m->resident_bytes());
    };
    return recompute({x}, [fn](const std::vector<at::Tensor>& in) { return fn(in[0]); }, hooks);
  }

  void install_stage3(UnitChain& chain, const std::shared_ptr<Impl>& self) {
    model = &chain;
    for (Param& p : params) p.tensor.set_data(at::empty({0}, p.tensor.options()));
    std::weak_ptr<Impl> weak = self;
    chain.set_unit_runner([weak](int64_t unit, const at::Tensor& x, const UnitFn& fn) {
      auto m = weak.lock();
      KILN_CHECK(m, "ZeRO-3: the optimizer that shards this model is gone");
      return m->run_unit(m, unit, x, fn);
    });
  }

  void finish_load() {
    if (stage == 3)
      refresh_compute();
    else
      write_model();
  }
};

ZeroOptimizer::ZeroOptimizer(UnitChain& model, Communicator& dp, int stage, int64_t bucket_bytes,
                             AdamWOptions hyper, bool zero3_keep_gathered)
    : impl_(std::make_shared<Impl>(dp, stage, bucket_bytes, hyper, zero3_keep_gathered)) {
  KILN_CHECK(stage >= 0 && stage <= 3, "ZeRO stage must be 0-3, got ", stage);
  impl_->build_layout(model);
  impl_->init_state(nullptr);
  impl_->move_state(impl_->model_device());
  impl_->install_grad_hooks(impl_);
  if (stage == 3) impl_->install_stage3(model, impl_);
}

ZeroOptimizer::~ZeroOptimizer() {
  if (impl_->model) impl_->model->set_unit_runner(nullptr);
}

ZeroOptimizer::ZeroOptimizer(UnitChain& model, Communicator& dp, int stage, int64_t bucket_bytes,
                             AdamWOptions hyper, bool zero3_keep_gathered, WeightSource& source)
    : impl_(std::make_shared<Impl>(dp, stage, bucket_bytes, hyper, zero3_keep_gathered)) {
  KILN_CHECK(stage >= 0 && stage <= 3, "ZeRO stage must be 0-3, got ", stage);
  // The layout only needs shapes: the model's tensors may still be placeholders (shape_only()).
  // Stage 3 keeps them empty; stages 0-2 materialise them from the source.
  impl_->build_layout(model);
  for (Impl::Param& p : impl_->params) p.tensor.set_data(at::empty({0}, at::kFloat));
  impl_->init_state(&source);
  impl_->install_grad_hooks(impl_);
  if (stage == 3) impl_->install_stage3(model, impl_);
}

int ZeroOptimizer::stage() const { return impl_->stage; }
int64_t ZeroOptimizer::steps_taken() const { return impl_->steps; }

void ZeroOptimizer::zero_grad() {
  Impl& m = *impl_;
  if (m.stage == 3) m.release_all();
  for (Impl::Param& p : m.params) p.tensor.mutable_grad() = at::Tensor();
  m.grad = at::Tensor();
  m.reset_arrivals();
  m.grad_peak = 0;
  m.peak = m.resident_bytes();
  m.between_units.clear();
}

void ZeroOptimizer::reduce_gradients() {
  Impl& m = *impl_;
  if (m.stage == 3) {
    m.drop_prefetched();
    for (size_t g = 0; g < m.groups.size(); ++g)
      KILN_CHECK(m.groups[g].refs == 0, "ZeRO-3: unit ", g, " still gathered after backward");
    if (!m.grad.defined()) m.grad = at::zeros({m.len}, m.master.options());
    return;
  }
  if (m.stage == 2) {
    // Units were reduced during backward; what is left is a unit some of whose parameters got no
    // gradient of the last backward (unused, or a tied weight's second accumulation).
    for (size_t g = 0; g < m.groups.size(); ++g)
      if (m.pending[g].defined()) m.reduce_pending(static_cast<int>(g));
    if (!m.grad.defined()) m.grad = at::zeros({m.len}, m.master.options());
    return;
  }
  m.grad = at::zeros({m.len}, m.comm_options());
  for (const Impl::Group& G : m.groups) m.reduce_group(G);
  m.grad = m.grad.to(m.master.device());
  m.note_grad_bytes();
}

double ZeroOptimizer::grad_norm() {
  Impl& m = *impl_;
  KILN_CHECK(m.grad.defined(), "grad_norm before reduce_gradients");
  // fp64 sums without a fp64 copy of the gradient (models/ops/fused_adamw.h).
  at::Tensor sq = at::zeros({1}, m.grad.options().dtype(at::kDouble));
  if (m.norm_weight.empty()) {
    sq += sum_of_squares(m.grad);
  } else {
    // Per parameter (tensor parallel): the kept part of each, weighted.
    for (const Impl::Group& G : m.groups)
      for (int i : G.params) {
        const Impl::Param& p = m.params[i];
        const auto [a, b] = m.kept(p, G);
        auto w = m.norm_weight.find(p.name);
        const double weight = w == m.norm_weight.end() ? 1.0 : w->second;
        if (b > a) sq += sum_of_squares(m.grad.narrow(0, m.local_index(p, G, a), b - a)) * weight;
      }
  }
  if (m.stage >= 1 && m.dp.size() > 1) {
    sq = sq.to(m.model_device());
    m.dp.all_reduce(sq);
  }
  if (m.norm_group && m.norm_group->size() > 1) {
    sq = sq.to(m.model_device());
    m.norm_group->all_reduce(sq);
  }
  return std::sqrt(sq.item<double>());
}

void ZeroOptimizer::set_grad_norm_group(Communicator* tp, std::map<std::string, double> weights) {
  impl_->norm_group = tp;
  impl_->norm_weight = std::move(weights);
}

void ZeroOptimizer::step(double lr, double grad_scale) {
  Impl& m = *impl_;
  KILN_CHECK(m.grad.defined(), "step before reduce_gradients");
  at::NoGradGuard no_grad;
  ++m.steps;
  adamw_update(m.master, m.exp_avg, m.exp_avg_sq, m.grad, m.decay_mask, lr, grad_scale, m.steps, m.hyper,
               m.lr_mask);
  m.finish_load();
  m.grad = at::Tensor();
}

void ZeroOptimizer::to(const c10::Device& device) { impl_->move_state(device); }
c10::Device ZeroOptimizer::state_device() const { return impl_->master.device(); }

std::vector<std::pair<std::string, std::vector<int64_t>>> ZeroOptimizer::trained_shapes() const {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (const Impl::Param& p : impl_->params) out.emplace_back(p.name, p.shape);
  return out;
}

std::vector<TensorSlice> ZeroOptimizer::state_slices() const {
  const Impl& m = *impl_;
  std::vector<TensorSlice> out;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const Impl::Param& p = m.params[i];
    const Impl::Group& G = m.group_of(static_cast<int>(i));
    const auto [a, b] = m.partition(p, G);
    if (a >= b) continue;
    const std::pair<const char*, const at::Tensor*> kinds[] = {
        {"master/", &m.master}, {"exp_avg/", &m.exp_avg}, {"exp_avg_sq/", &m.exp_avg_sq}};
    for (const auto& [prefix, buf] : kinds) {
      // Views of the state when it is on the host (a checkpoint is written before the next
      // update, and a copy would double the rank's optimizer memory during the save).
      at::Tensor flat = buf->narrow(0, m.local_index(p, G, a), b - a).to(at::kCPU, at::kFloat);
      for (TensorSlice& s : slices_of_range(prefix + p.name, p.shape, a, b, flat)) out.push_back(std::move(s));
    }
  }
  return out;
}

void ZeroOptimizer::load_state(const std::vector<TensorSlice>& slices, int64_t steps) {
  SlicesSource source(slices);
  load_state(source, steps);
}

void ZeroOptimizer::load_state(WeightSource& state, int64_t steps) {
  Impl& m = *impl_;
  at::NoGradGuard no_grad;
  const std::pair<const char*, at::Tensor*> kinds[] = {
      {"master/", &m.master}, {"exp_avg/", &m.exp_avg}, {"exp_avg_sq/", &m.exp_avg_sq}};
  for (const auto& [prefix, buf] : kinds) {
    if (buf->is_cpu()) {  // straight into the state: no second copy of it in memory
      m.read_kept(state, prefix, *buf);
      continue;
    }
    at::Tensor host = at::empty({m.len}, at::kFloat);
    m.read_kept(state, prefix, host);
    buf->copy_(host);
  }
  m.steps = steps;
  m.finish_load();
}

std::vector<std::pair<std::string, at::Tensor>> ZeroOptimizer::gather_parameters() const {
  const Impl& m = *impl_;
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const Impl::Group& G : m.groups) {
    at::Tensor full = m.master.narrow(0, G.local, G.keep_len);
    if (m.stage > 0 && m.dp.size() > 1) {
      at::Tensor gathered = at::empty({G.shard * m.dp.size()}, m.comm_options());
      m.dp.all_gather(full.to(gathered.device()), gathered);
      full = gathered;
    }
    for (int i : G.params) {
      const Impl::Param& p = m.params[i];
      out.emplace_back(p.name, full.narrow(0, p.offset, p.numel).view(p.shape).to(at::kCPU, at::kFloat, false, true));
    }
  }
  // Model order, as the parameters were listed.
  std::map<std::string, size_t> order;
  for (size_t i = 0; i < m.params.size(); ++i) order[m.params[i].name] = i;
  std::sort(out.begin(), out.end(), [&](const auto& x, const auto& y) { return order[x.first] < order[y.first]; });
  return out;
}

int64_t ZeroOptimizer::resident_parameter_bytes() const { return impl_->resident_bytes(); }
int64_t ZeroOptimizer::peak_resident_parameter_bytes() const { return impl_->peak; }
int64_t ZeroOptimizer::peak_gradient_bytes() const { return impl_->grad_peak; }
std::vector<int64_t> ZeroOptimizer::resident_between_units() const { return impl_->between_units; }

}  // namespace kiln
