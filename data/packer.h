// Packing: whole samples into rows of `capacity` positions, best-fit decreasing.
// A sample of n tokens occupies n-1 positions (inputs tokens[0..n-2], labels tokens[1..n-1]).
#pragma once
#include <cstdint>
#include <vector>

namespace kiln {

// Items (lengths in positions, each 1..capacity) -> bins of item indices. Items are placed
// longest first into the open bin whose free space fits them most tightly (a new bin when
// none fits). Bins come out in creation order, items inside a bin in index order.
std::vector<std::vector<int64_t>> best_fit_pack(const std::vector<int64_t>& lengths, int64_t capacity);

}  // namespace kiln
