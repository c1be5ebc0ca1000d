// Small integer hashes for deriving seeds: splitmix64 (Steele, Lea and Flood's mixer, as in Java's
// SplittableRandom). The LoRA dropout masks and the mixer's per-epoch permutations seed their
// generators from it, and tests/fixtures/peft mirrors it, so its values must never change.
#pragma once
#include <cstdint>

namespace kiln {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace kiln
