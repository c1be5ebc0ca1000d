// The host block cache (see host_block_cache.h).
#include "base/host_block_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>

namespace kiln {
namespace {

constexpr size_t kPage = 4096;

class HostBlockCache final : public c10::Allocator {
 public:
  HostBlockCache(c10::Allocator* fallback, size_t min_bytes) : fallback_(fallback), min_bytes_(min_bytes) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < min_bytes_) return fallback_->allocate(n);
    const size_t size = (n + kPage - 1) / kPage * kPage;
    std::lock_guard<std::mutex> lock(mu_);
    void* ptr = nullptr;
    size_t got = 0;
    auto it = free_.lower_bound(size);
    if (it != free_.end() && it->first <= size + size / 32) {
      got = it->first;
      ptr = it->second->ptr;
      lru_.erase(it->second);
      free_.erase(it);
      stats_.cached_bytes -= static_cast<int64_t>(got);
      ++stats_.hits;
    } else {
      // Mapping a new block: first give back cached ones so that the cache never raises the peak.
      const int64_t mark = std::max(stats_.peak_live_bytes, stats_.live_bytes + static_cast<int64_t>(size));
      while (!lru_.empty() && stats_.live_bytes + stats_.cached_bytes + static_cast<int64_t>(size) > mark)
        evict_oldest();
      got = size;
      ptr = c10::alloc_cpu(size);
      ++stats_.misses;
    }
    stats_.live_bytes += static_cast<int64_t>(got);
    stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
    stats_.peak_mapped_bytes = std::max(stats_.peak_mapped_bytes, stats_.live_bytes + stats_.cached_bytes);
    auto* block = new Block{this, ptr, got};
    return {ptr, block, &HostBlockCache::release_block, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  HostBlockCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    while (!lru_.empty()) evict_oldest();
  }

 private:
  struct Block {
    HostBlockCache* owner;
    void* ptr;
    size_t size;
  };
  struct Cached {
    void* ptr;
    size_t size;
    std::multimap<size_t, std::list<Cached>::iterator>::iterator where;
  };

  static void release_block(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    b->owner->give_back(b->ptr, b->size);
    delete b;
  }

  void give_back(void* ptr, size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.live_bytes -= static_cast<int64_t>(size);
    lru_.push_back({ptr, size, {}});
    lru_.back().where = free_.emplace(size, std::prev(lru_.end()));
    stats_.cached_bytes += static_cast<int64_t>(size);
  }

  void evict_oldest() {  // under mu_
    Cached& c = lru_.front();
    free_.erase(c.where);
    c10::free_cpu(c.ptr);
    stats_.cached_bytes -= static_cast<int64_t>(c.size);
    lru_.pop_front();
  }

  c10::Allocator* fallback_;
  size_t min_bytes_;
  std::mutex mu_;
  std::list<Cached> lru_;                                    // least recently freed first
  std::multimap<size_t, std::list<Cached>::iterator> free_;  // size -> its entry in lru_
  HostBlockCacheStats stats_;
};

HostBlockCache* g_cache = nullptr;  // lives until exit: tensors may be freed during static destruction

}  // namespace

void install_host_block_cache(size_t min_bytes) {
  if (g_cache) return;
  if (const char* env = std::getenv("KILN_HOST_CACHE"); env && !std::strcmp(env, "0")) return;
  g_cache = new HostBlockCache(c10::GetDefaultCPUAllocator(), min_bytes);
  c10::SetCPUAllocator(g_cache, /*priority=*/1);
}

bool host_block_cache_installed() { return g_cache != nullptr; }

HostBlockCacheStats host_block_cache_stats() { return g_cache ? g_cache->stats() : HostBlockCacheStats{}; }

void host_block_cache_release() {
  if (g_cache) g_cache->release_all();
}

}  // namespace kiln
