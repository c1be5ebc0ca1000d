// The host block cache (base/host_block_cache.h): a freed large block serves the next request of
// its size without mapping (the same address comes back), small ones bypass it, a request of
// another size gets the cached pages moved over (no page faults, data intact, the unused rest
// still cached), and what it keeps never takes the mapped total above the high-water mark of
// live blocks.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include "base/host_block_cache.h"

namespace kiln {
namespace {

constexpr int64_t kMiB = 1 << 20;

TEST(HostBlockCache, ReusesAFreedBlockOfTheSameSize) {
  install_host_block_cache();
  ASSERT_TRUE(host_block_cache_installed());
  host_block_cache_release();
  void* first = nullptr;
  {
    at::Tensor a = at::empty({4 * kMiB / 4}, at::kFloat);  // 4 MiB
    first = a.data_ptr();
  }
  const HostBlockCacheStats before = host_block_cache_stats();
  EXPECT_GE(before.cached_bytes, 4 * kMiB);
  at::Tensor b = at::empty({4 * kMiB / 4}, at::kFloat);
  const HostBlockCacheStats after = host_block_cache_stats();
  EXPECT_EQ(b.data_ptr(), first);
  EXPECT_EQ(after.hits, before.hits + 1);
  EXPECT_EQ(after.misses, before.misses);
  // Below the threshold: not the cache's.
  at::Tensor small = at::empty({1000}, at::kFloat);
  EXPECT_EQ(host_block_cache_stats().hits + host_block_cache_stats().misses, after.hits + after.misses);
}

TEST(HostBlockCache, NeverMapsMoreThanThePeakOfLiveBlocks) {
  install_host_block_cache();
  host_block_cache_release();
  const int64_t base_live = host_block_cache_stats().live_bytes;
  {
    // A "step" of 8 blocks of 2 MiB live at once, freed, then a step of blocks of another size:
    // their pages move over from the 2 MiB blocks, and nothing is kept beside them.
    std::vector<at::Tensor> step;
    for (int i = 0; i < 8; ++i) step.push_back(at::empty({2 * kMiB / 4}, at::kFloat));
    step.clear();
    for (int i = 0; i < 5; ++i) step.push_back(at::empty({3 * kMiB / 4}, at::kFloat));
    const HostBlockCacheStats s = host_block_cache_stats();
    EXPECT_LE(s.live_bytes + s.cached_bytes, std::max(s.peak_live_bytes, base_live + 16 * kMiB));
    step.clear();
    // Steps of the first shape again: served from the cache while it has blocks of that size.
    const int64_t misses = host_block_cache_stats().misses;
    for (int rep = 0; rep < 3; ++rep) {
      for (int i = 0; i < 5; ++i) step.push_back(at::empty({3 * kMiB / 4}, at::kFloat));
      step.clear();
    }
    EXPECT_EQ(host_block_cache_stats().misses, misses);
  }
  const HostBlockCacheStats s = host_block_cache_stats();
  EXPECT_LE(s.peak_mapped_bytes, s.peak_live_bytes);
  host_block_cache_release();
  EXPECT_EQ(host_block_cache_stats().cached_bytes, 0);
}

int64_t minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Checks a tensor's values in place (a reduction would allocate and move the cache's state).
bool holds_iota(const at::Tensor& t) {
  const int32_t* p = t.data_ptr<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (p[i] != static_cast<int32_t>(i)) return false;
  return true;
}

TEST(HostBlockCache, ARequestOfAnotherSizeReusesCachedPages) {
  install_host_block_cache();
  host_block_cache_release();
  {
    // Three 4 MiB blocks, touched, freed: 12 MiB of resident pages in the cache.
    std::vector<at::Tensor> step;
    for (int i = 0; i < 3; ++i) step.push_back(at::full({4 * kMiB / 4}, 1.0f));
  }
  const HostBlockCacheStats before = host_block_cache_stats();
  ASSERT_EQ(before.cached_bytes, 12 * kMiB);
  // 10 MiB: no cached block has that size; its pages come from the three (the largest first,
  // the last one's front), so writing all of it faults next to nothing (2560 pages if mapped fresh).
  const int64_t faults = minor_faults();
  at::Tensor big = at::arange(10 * kMiB / 4, at::kInt);
  const int64_t faulted = minor_faults() - faults;
  const HostBlockCacheStats after = host_block_cache_stats();
  EXPECT_LT(faulted, 64) << "pages faulted in for a 10 MiB tensor assembled from cached blocks";
  EXPECT_EQ(after.moved_bytes - before.moved_bytes, 10 * kMiB);
  EXPECT_EQ(after.fresh_bytes, before.fresh_bytes);
  EXPECT_EQ(after.cached_bytes, 2 * kMiB);
  // The 2 MiB rest of the third block is still cached and serves a 2 MiB request whole; the data
  // of both is their own.
  at::Tensor rest = at::arange(2 * kMiB / 4, at::kInt);
  EXPECT_EQ(host_block_cache_stats().hits, after.hits + 1);
  EXPECT_TRUE(holds_iota(big));
  EXPECT_TRUE(holds_iota(rest));
  // More than the cache holds: what it has moves, the rest is mapped fresh.
  big.reset();
  rest.reset();
  const HostBlockCacheStats full = host_block_cache_stats();
  EXPECT_EQ(full.cached_bytes, 12 * kMiB);
  at::Tensor bigger = at::arange(16 * kMiB / 4, at::kInt);
  const HostBlockCacheStats s = host_block_cache_stats();
  EXPECT_EQ(s.moved_bytes - full.moved_bytes, 12 * kMiB);
  EXPECT_EQ(s.fresh_bytes - full.fresh_bytes, 4 * kMiB);
  EXPECT_EQ(s.cached_bytes, 0);
  EXPECT_TRUE(holds_iota(bigger));
  EXPECT_LE(s.peak_mapped_bytes, s.peak_live_bytes);
}

}  // namespace
}  // namespace kiln
