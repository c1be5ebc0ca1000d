// RowStream: mixer + packer -> the global row order (see row_stream.h).
#include "data/row_stream.h"

#include <algorithm>
#include <limits>

#include "data/packer.h"
#include "base/config.h"
#include "base/error.h"

namespace kiln {

namespace {
constexpr int64_t kChunkRows = 16;  // best-fit packs the samples of about this many rows at once

}  // namespace

std::string resolve_overlong(const std::string& overlong, const std::string& format,
                             const std::string& source) {
  const bool sft = !format.empty() && format != "text";
  if (overlong == "auto") return sft || format.empty() ? "truncate" : "split";
  if (overlong == "split" && sft)
    user_error("data.overlong: split cuts pretraining documents into pieces, but source \"", source, "\" is ",
               format,
               " (SFT), where a piece would hold an answer without its question; valid for it: auto "
               "(split text, truncate SFT), truncate or drop");
  if (overlong != "split" && overlong != "truncate" && overlong != "drop")
    user_error("data.overlong: unknown value \"", overlong, "\" (expected auto, split, truncate or drop)");
  return overlong;
}

std::vector<Piece> sample_pieces(int32_t source, int64_t doc, int64_t length, int64_t seq_len,
                                 const std::string& policy) {
  if (length < 2) return {};  // a single token has no label
  if (length - 1 <= seq_len) return {{source, doc, length, 0}};
  if (policy == "drop") return {};
  if (policy == "truncate") return {{source, doc, seq_len + 1, 0}};
  // split: piece k holds tokens [k*L, min(k*L + L + 1, n)): labels k*L+1 .. of the document,
  // each exactly once; the last token of a piece is the first input of the next.
  std::vector<Piece> out;
  for (int64_t start = 0; start < length - 1; start += seq_len)
    out.push_back({source, doc, std::min(seq_len + 1, length - start), start});
  return out;
}

MixerOptions RowStream::mixer_options(const DataConfig& data, const std::vector<std::string>& policy) {
  // The mixer counts what a sample can contribute to rows: a split one all its tokens, a
  // truncated (or dropped) one at most seq_len + 1.
  MixerOptions o;
  o.redraw_each_epoch = data.redraw_each_epoch;
  for (const auto& p : policy)
    o.max_length.push_back(p == "split" ? std::numeric_limits<int64_t>::max() : data.seq_len + 1);
  return o;
}

namespace {
std::vector<std::string> resolve_all(const DataConfig& data, const std::vector<std::string>& names,
                                     const std::vector<std::string>& formats) {
  std::vector<std::string> out;
  for (size_t s = 0; s < names.size(); ++s)
    out.push_back(resolve_overlong(data.overlong, s < formats.size() ? formats[s] : "", names[s]));
  return out;
}
}  // namespace

RowStream::RowStream(std::shared_ptr<const SampleLengths> lengths, std::vector<std::string> names,
                     std::vector<double> weights, const DataConfig& data, uint64_t seed,
                     int64_t global_batch_size, const std::vector<std::string>& formats)
    : lengths_ptr_(std::move(lengths)),
      lengths_(*lengths_ptr_),
      names_(std::move(names)),
      weights_(std::move(weights)),
      data_(data),
      global_batch_(global_batch_size),
      seed_(seed),
      policy_(resolve_all(data, names_, formats)),
      mixer_(data.mix, lengths_ptr_, seed, mixer_options(data, policy_)),
      tokens_(lengths_.size(), 0) {
  if (data_.seq_len < 1) user_error("data.seq_len: ", data_.seq_len, " must be >= 1");
  KILN_CHECK(global_batch_ > 0, "global batch ", global_batch_);
  KILN_CHECK(names_.size() == lengths_.size(), names_.size(), " names for ", lengths_.size(), " sources");
  validate_schedule(data_.schedule, names_);
  if (data_.mix == MixMode::telechat && !data_.schedule.empty() && !data_.redraw_each_epoch)
    user_error(
        "data.schedule: with data.mix: telechat the pool is drawn once, so a schedule would never "
        "apply; set data.redraw_each_epoch: true (a new pool, with the weights then in force, "
        "every epoch) or drop the schedule");
  for (size_t s = 0; s < lengths_.size(); ++s) {
    int64_t usable = 0;
    for (int64_t l : lengths_[s]) usable += l >= 2;
    if (usable == 0 && weights_[s] > 0)
      user_error("data.mixture: source \"", names_[s], "\" has no usable samples");
  }
}

void RowStream::refill() {
  const int64_t cap = data_.seq_len;
  const auto w =
      schedule_weights(data_.schedule, names_, weights_, static_cast<double>(rows_ / global_batch_));
  std::vector<Piece> pieces;
  std::vector<int64_t> positions;
  int64_t total = 0;
  const int64_t want = data_.packing ? kChunkRows * cap : 1;
  for (int guard = 0; total < want; ++guard) {
    KILN_CHECK(guard < 100000000, "no usable sample drawn");
    const SampleRef r = mixer_.next(w);
    const int64_t len = lengths_[r.source][r.doc];
    const std::string& policy = policy_[r.source];
    const auto got = sample_pieces(r.source, r.doc, len, cap, policy);
    if (len >= 2 && len - 1 > cap) {
      if (policy == "drop") ++dropped_;
      if (policy == "truncate") ++truncated_;
      if (policy == "split") {
        ++split_;
        split_pieces_ += static_cast<int64_t>(got.size());
      }
    }
    for (const Piece& p : got) {
      pieces.push_back(p);
      positions.push_back(p.length - 1);
      total += p.length - 1;
    }
  }
  if (!data_.packing) {  // one piece per row, in draw order
    for (const Piece& p : pieces) ready_.push_back({p});
    return;
  }
  // Best-fit opens rows longest sample first; a seeded shuffle of the rows keeps that from
  // skewing which sources the first steps of a chunk see.
  const auto bins = best_fit_pack(positions, cap);
  std::vector<int64_t> order(bins.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  auto rng = make_rng(seed_, 0x9ac4, static_cast<uint64_t>(chunks_++));
  shuffle(order, rng);
  for (int64_t b : order) {
    Row row;
    for (int64_t i : bins[b]) row.push_back(pieces[i]);
    ready_.push_back(std::move(row));
  }
}

Row RowStream::next() {
  if (ready_.empty()) refill();
  Row row = std::move(ready_.front());
  ready_.pop_front();
  for (const Piece& p : row) tokens_[p.source] += p.length;
  ++rows_;
  return row;
}

}  // namespace kiln
