// The host block cache (base/host_block_cache.h): a freed large block serves the next request of
// its size without mapping (the same address comes back), small ones bypass it, and what it keeps
// never takes the mapped total above the high-water mark of live blocks.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

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
    // the cached 2 MiB blocks cannot serve them and must be released, not kept beside them.
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

}  // namespace
}  // namespace kiln
