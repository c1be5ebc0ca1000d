// RowStream: mixer + packer -> the global row order (see row_stream.h).
#include "data/row_stream.h"

#include <algorithm>

#include "data/packer.h"
#include "trainer/config.h"
#include "trainer/error.h"

namespace kiln {

namespace {
constexpr int64_t kChunkRows = 16;  // best-fit packs the samples of about this many rows at once

}  // namespace

RowStream::RowStream(std::shared_ptr<const SampleLengths> lengths, std::vector<std::string> names,
                     std::vector<double> weights, const DataConfig& data, uint64_t seed,
                     int64_t global_batch_size)
    : lengths_ptr_(std::move(lengths)),
      lengths_(*lengths_ptr_),
      names_(std::move(names)),
      weights_(std::move(weights)),
      data_(data),
      global_batch_(global_batch_size),
      seed_(seed),
      // the mixer counts what a sample can contribute to a row: at most seq_len + 1 tokens
      mixer_(data.mix, lengths_ptr_, seed, data.seq_len + 1),
      tokens_(lengths_.size(), 0) {
  if (data_.seq_len < 1) user_error("data.seq_len: ", data_.seq_len, " must be >= 1");
  if (data_.overlong != "truncate" && data_.overlong != "drop")
    user_error("data.overlong: unknown value \"", data_.overlong, "\" (expected truncate or drop)");
  KILN_CHECK(global_batch_ > 0, "global batch ", global_batch_);
  validate_schedule(data_.schedule, names_);
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
    int64_t len = lengths_[r.source][r.doc];
    if (len < 2) continue;  // a single token has no label
    if (len - 1 > cap) {
      if (data_.overlong == "drop") {
        ++dropped_;
        continue;
      }
      ++truncated_;
      len = cap + 1;
    }
    pieces.push_back({r.source, r.doc, len});
    positions.push_back(len - 1);
    total += len - 1;
  }
  if (!data_.packing) {
    ready_.push_back({pieces.front()});
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
