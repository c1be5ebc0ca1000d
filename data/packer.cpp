// Best-fit decreasing packing (see packer.h).
#include "data/packer.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <utility>

#include "base/error.h"

namespace kiln {

std::vector<std::vector<int64_t>> best_fit_pack(const std::vector<int64_t>& lengths, int64_t capacity) {
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  // Longest first; ties by index so the result does not depend on the sort implementation.
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return lengths[a] != lengths[b] ? lengths[a] > lengths[b] : a < b; });
  std::vector<std::vector<int64_t>> bins;
  std::set<std::pair<int64_t, int64_t>> open;  // (free space, bin index), tightest first
  for (const int64_t item : order) {
    const int64_t len = lengths[item];
    KILN_CHECK(len >= 1 && len <= capacity, "item length ", len, " outside 1..", capacity);
    auto it = open.lower_bound({len, -1});
    if (it == open.end()) {
      bins.push_back({item});
      if (capacity - len > 0) open.insert({capacity - len, static_cast<int64_t>(bins.size()) - 1});
      continue;
    }
    const auto [space, bin] = *it;
    open.erase(it);
    bins[bin].push_back(item);
    if (space - len > 0) open.insert({space - len, bin});
  }
  for (auto& b : bins) std::sort(b.begin(), b.end());
  return bins;
}

}  // namespace kiln
