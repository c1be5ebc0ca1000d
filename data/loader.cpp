// DataLoader and EvalLoader: rows of the token store -> Batches (see loader.h).
#include "data/loader.h"

#include <ATen/ops/empty.h>

#include <algorithm>

#include "data/prep.h"
#include "base/error.h"
#include "data/vocab_check.h"

namespace kiln {

void to_json(nlohmann::json& j, const LoaderState& s) {
  j = {{"step", s.step},
       {"micro", s.micro},
       {"seed", s.seed},
       {"sources", s.sources},
       {"source_tokens", s.source_tokens}};
}

void from_json(const nlohmann::json& j, LoaderState& s) {
  s.step = j.at("step").get<int64_t>();
  s.micro = j.at("micro").get<int64_t>();
  s.seed = j.at("seed").get<uint64_t>();
  s.sources = j.at("sources").get<std::vector<std::string>>();
  s.source_tokens = j.at("source_tokens").get<std::vector<int64_t>>();
}

Batch make_batch(const TokenStore& store, const std::vector<Row>& rows, int64_t seq_len, int32_t pad_id,
                 int64_t vocab_size) {
  const int64_t B = static_cast<int64_t>(rows.size()), T = seq_len;
  Batch b;
  b.input_ids = at::empty({B, T}, at::kLong);     // (B, T)
  b.labels = at::empty({B, T}, at::kLong);        // (B, T)
  b.position_ids = at::empty({B, T}, at::kLong);  // (B, T)
  b.source_tokens.assign(store.sources().size(), 0);
  int64_t* in = b.input_ids.data_ptr<int64_t>();
  int64_t* lab = b.labels.data_ptr<int64_t>();
  int64_t* pos = b.position_ids.data_ptr<int64_t>();
  for (int64_t r = 0; r < B; ++r) {
    int64_t t = r * T;
    const int64_t end = t + T;
    for (const Piece& p : rows[r]) {
      const StoreSource& src = store.sources()[p.source];
      KILN_CHECK(p.length >= 2 && p.offset >= 0 && p.offset + p.length <= src.doc_length(p.doc), "piece [",
                 p.offset, ", +", p.length, ") of a ", src.doc_length(p.doc), "-token doc");
      KILN_CHECK(t + p.length - 1 <= end, "row overflows seq_len ", T);
      const int32_t* tok = src.doc_tokens(p.doc) + p.offset;
      const uint8_t* mask = src.doc_mask(p.doc) + p.offset;
      if (vocab_size > 0)
        for (int64_t k = 0; k < p.length; ++k)
          if (tok[k] < 0 || tok[k] >= vocab_size)
            user_error(store.dir(), ": source '", src.name, "' document ", p.doc, " holds token id ", tok[k],
                       ", outside the model's vocabulary [0, ", vocab_size,
                       ") (model.vocab_size); prepare the data with the model's tokenizer");
      for (int64_t k = 0; k + 1 < p.length; ++k, ++t) {
        in[t] = tok[k];
        lab[t] = mask[k + 1] ? tok[k + 1] : kIgnoreIndex;
        pos[t] = k;
        b.loss_tokens += mask[k + 1] != 0;
      }
      b.source_tokens[p.source] += p.length;
    }
    for (int64_t k = 0; t < end; ++k, ++t) {  // padding: its own "document", no labels
      in[t] = pad_id;
      lab[t] = kIgnoreIndex;
      pos[t] = k;
    }
    b.packed = b.packed || rows[r].size() > 1;
  }
  return b;
}

SampleLossWeights sample_loss_weights(const Batch& batch) {
  const at::Tensor labels = batch.labels.to(at::kCPU).contiguous();
  const at::Tensor pos = batch.position_ids.to(at::kCPU).contiguous();
  const int64_t B = labels.size(0), T = labels.size(1);
  SampleLossWeights out;
  out.weights = at::empty({B, T}, at::kFloat);  // (B, T)
  const int64_t* lab = labels.data_ptr<int64_t>();
  const int64_t* p = pos.data_ptr<int64_t>();
  float* w = out.weights.data_ptr<float>();
  for (int64_t start = 0; start < B * T;) {  // one sample: [start, end) inside one row
    int64_t end = start + 1;
    while (end % T != 0 && p[end] != 0) ++end;
    int64_t trained = 0;
    for (int64_t t = start; t < end; ++t) trained += lab[t] != kIgnoreIndex;
    for (int64_t t = start; t < end; ++t)
      w[t] = lab[t] != kIgnoreIndex ? 1.0f / static_cast<float>(trained) : 0.0f;
    out.samples += trained > 0;
    start = end;
  }
  return out;
}

namespace {

SampleLengths doc_lengths(const TokenStore& store) {
  SampleLengths out;
  for (const auto& s : store.sources()) {
    std::vector<int64_t> l(s.docs);
    for (int64_t d = 0; d < s.docs; ++d) l[d] = s.doc_length(d);
    out.push_back(std::move(l));
  }
  return out;
}

}  // namespace

DataLoader::DataLoader(const Config& cfg, int64_t dp_rank, int64_t dp_size, int64_t global_batch_size)
    : cfg_(cfg),
      rank_(dp_rank),
      dp_(dp_size),
      global_batch_(global_batch_size),
      micro_batch_(cfg.train.micro_batch_size) {
  KILN_CHECK(dp_ >= 1 && rank_ >= 0 && rank_ < dp_, "dp rank ", rank_, " of ", dp_);
  if (micro_batch_ < 1) user_error("train.micro_batch_size: ", micro_batch_, " must be >= 1");
  if (global_batch_ < 1 || global_batch_ % (dp_ * micro_batch_) != 0)
    user_error("train.global_batch_size: ", global_batch_,
               " must be a multiple of micro_batch_size * dp = ", micro_batch_ * dp_);
  micro_per_step_ = global_batch_ / dp_ / micro_batch_;
  if (cfg.data.mixture.empty())
    user_error("data.mixture: required (a data.json, a .jsonl or a `kiln prep` dir)");
  store_ = std::make_unique<TokenStore>(ensure_prepared(cfg, cfg.data.mixture));
  check_vocab_fits(store_->vocab_size(), store_->dir() + "/manifest.json", cfg.model);
  lengths_ = std::make_shared<const SampleLengths>(doc_lengths(*store_));
  for (const auto& s : store_->sources()) {
    names_.push_back(s.name);
    weights_.push_back(s.weight);
    formats_.push_back(s.format);
  }
  pad_id_ = store_->pad_id();
  // Checks the options (seq_len, overlong, mix, schedule) once, here, rather than in the thread.
  RowStream check(lengths_, names_, weights_, cfg_.data, static_cast<uint64_t>(cfg_.train.seed),
                  global_batch_, formats_);
  LoaderState s;
  s.seed = static_cast<uint64_t>(cfg_.train.seed);
  s.sources = names_;
  s.source_tokens.assign(names_.size(), 0);
  state_ = s;
  start(s);
}

DataLoader::~DataLoader() { stop(); }

void DataLoader::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void DataLoader::start(const LoaderState& from) {
  queue_.clear();
  error_ = nullptr;
  stop_ = false;
  worker_ = std::thread([this, from] { produce(from); });
}

void DataLoader::produce(LoaderState cur) {
  try {
    RowStream stream(lengths_, names_, weights_, cfg_.data, cur.seed, global_batch_, formats_);
    const int64_t per_rank = global_batch_ / dp_;
    const size_t depth = static_cast<size_t>(std::max<int64_t>(1, cfg_.data.prefetch));
    while (true) {
      const int64_t first = cur.step * global_batch_ + rank_ * per_rank + cur.micro * micro_batch_;
      while (stream.rows() < first) stream.next();
      std::vector<Row> rows;
      for (int64_t i = 0; i < micro_batch_; ++i) rows.push_back(stream.next());
      Item item;
      item.batch = make_batch(*store_, rows, cfg_.data.seq_len, pad_id_, cfg_.model.vocab_size);
      for (const Row& row : rows)
        for (const Piece& p : row) item.real_positions += p.length - 1;
      if (++cur.micro == micro_per_step_) {  // the step is done: the next position is its end
        while (stream.rows() < (cur.step + 1) * global_batch_) stream.next();
        ++cur.step;
        cur.micro = 0;
      }
      cur.source_tokens = stream.source_tokens();
      item.after = cur;
      item.truncated = stream.truncated();
      item.dropped = stream.dropped();
      item.split = stream.split();
      item.split_pieces = stream.split_pieces();
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || queue_.size() < depth; });
      if (stop_) return;
      queue_.push_back(std::move(item));
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

Batch DataLoader::next() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (queue_.empty()) std::rethrow_exception(error_);
  Item item = std::move(queue_.front());
  queue_.pop_front();
  cv_.notify_all();
  state_ = item.after;
  truncated_ = item.truncated;
  dropped_ = item.dropped;
  split_ = item.split;
  split_pieces_ = item.split_pieces;
  const int64_t n = item.batch.input_ids.numel();
  positions_ += n;
  loss_positions_ += item.batch.loss_tokens;
  real_positions_ += item.real_positions;
  return std::move(item.batch);
}

LoaderState DataLoader::state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_;
}

void DataLoader::restore(const LoaderState& s) {
  if (s.sources != names_) {
    std::string a, b;
    for (const auto& n : s.sources) a += (a.empty() ? "" : ", ") + n;
    for (const auto& n : names_) b += (b.empty() ? "" : ", ") + n;
    user_error("data.mixture: the checkpoint was trained on sources [", a, "] but the mixture now has [", b,
               "]");
  }
  if (s.micro < 0 || s.micro >= micro_per_step_ || s.step < 0)
    user_error("data: the saved loader position (step ", s.step, ", micro-batch ", s.micro, ") does not fit ",
               micro_per_step_,
               " micro-batches per step on this layout; resume from a "
               "checkpoint taken at a step boundary");
  stop();
  state_ = s;
  start(s);
}

std::vector<std::string> DataLoader::source_names() const { return names_; }

std::vector<MixShare> DataLoader::mix_shares() const {
  return kiln::mix_shares(*lengths_, names_, weights_, formats_, cfg_.data,
                          static_cast<uint64_t>(cfg_.train.seed));
}

double DataLoader::packing_efficiency() const {
  std::lock_guard<std::mutex> lock(mu_);
  return positions_ ? double(real_positions_) / double(positions_) : 0.0;
}

double DataLoader::loss_fraction() const {
  std::lock_guard<std::mutex> lock(mu_);
  return positions_ ? double(loss_positions_) / double(positions_) : 0.0;
}

int64_t DataLoader::truncated() const {
  std::lock_guard<std::mutex> lock(mu_);
  return truncated_;
}

int64_t DataLoader::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

int64_t DataLoader::split() const {
  std::lock_guard<std::mutex> lock(mu_);
  return split_;
}

int64_t DataLoader::split_pieces() const {
  std::lock_guard<std::mutex> lock(mu_);
  return split_pieces_;
}

EvalLoader::EvalLoader(const Config& cfg, int64_t dp_rank, int64_t dp_size)
    : rank_(dp_rank), dp_(dp_size), micro_batch_(cfg.train.micro_batch_size), seq_len_(cfg.data.seq_len) {
  if (cfg.data.eval.empty()) user_error("data.eval: not set (a data.json, a .jsonl or a `kiln prep` dir)");
  if (seq_len_ < 1) user_error("data.seq_len: ", seq_len_, " must be >= 1");
  store_ = std::make_unique<TokenStore>(ensure_prepared(cfg, cfg.data.eval));
  check_vocab_fits(store_->vocab_size(), store_->dir() + "/manifest.json", cfg.model);
  vocab_size_ = cfg.model.vocab_size;
  pad_id_ = store_->pad_id();
  // Every sample in store order, up to eval_samples (over-long ones split, truncated or dropped
  // as in training); packed next-fit so the order is kept.
  int64_t taken = 0, used = seq_len_;
  for (size_t s = 0; s < store_->sources().size(); ++s) {
    const StoreSource& src = store_->sources()[s];
    const std::string policy = resolve_overlong(cfg.data.overlong, src.format, src.name);
    for (int64_t d = 0; d < src.docs; ++d) {
      if (cfg.data.eval_samples > 0 && taken >= cfg.data.eval_samples) break;
      const auto pieces = sample_pieces(static_cast<int32_t>(s), d, src.doc_length(d), seq_len_, policy);
      if (pieces.empty()) continue;
      ++taken;
      for (const Piece& p : pieces) {
        if (!cfg.data.packing || used + p.length - 1 > seq_len_) {
          rows_.emplace_back();
          used = 0;
        }
        rows_.back().push_back(p);
        used += p.length - 1;
      }
    }
  }
}

bool EvalLoader::next(Batch& out) {
  if (cursor_ >= static_cast<int64_t>(rows_.size())) return false;
  std::vector<Row> rows;
  for (int64_t i = 0; i < micro_batch_; ++i) {
    const int64_t g = cursor_ + rank_ * micro_batch_ + i;
    rows.push_back(g < static_cast<int64_t>(rows_.size()) ? rows_[g] : Row{});
  }
  cursor_ += dp_ * micro_batch_;
  out = make_batch(*store_, rows, seq_len_, pad_id_, vocab_size_);
  return true;
}

}  // namespace kiln
