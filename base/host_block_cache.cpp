// The host block cache (see host_block_cache.h).
#include "base/host_block_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <list>
#include <map>
#include <mutex>
#include <vector>

namespace kiln {
namespace {

constexpr size_t kPage = 4096;
// A request's remainder below this is mapped fresh rather than moved from a cached block: every
// move adds a mapping (a VMA) to the process, and a few pages fault in faster than they move.
constexpr size_t kMinMove = size_t{256} << 10;

// One large block: a page-aligned range of its own mapping. `segs` tile [0, size) in order, each
// inside one kernel mapping (a moved piece or the fresh rest), since mremap moves one at a time.
struct Block;
struct Seg {
  size_t off, len;
};

class HostBlockCache final : public c10::Allocator {
 public:
  HostBlockCache(c10::Allocator* fallback, size_t min_bytes) : fallback_(fallback), min_bytes_(min_bytes) {}

  c10::DataPtr allocate(size_t n) override;

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

  void give_back(Block* b);

 private:
  Block* take_whole(size_t size);
  Block* assemble(size_t size);
  void cache(Block* b);
  void uncache(Block* b);
  void evict_oldest();

  c10::Allocator* fallback_;
  size_t min_bytes_;
  std::mutex mu_;
  std::list<Block*> lru_;                                    // least recently freed first
  std::multimap<size_t, std::list<Block*>::iterator> free_;  // size -> its entry in lru_
  HostBlockCacheStats stats_;
};

struct Block {
  HostBlockCache* owner;
  char* base;
  size_t size;
  std::vector<Seg> segs;
  std::list<Block*>::iterator in_lru;  // while cached
  std::multimap<size_t, std::list<Block*>::iterator>::iterator in_free;
};

void release_block(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  b->owner->give_back(b);
}

c10::DataPtr HostBlockCache::allocate(size_t n) {
  if (n < min_bytes_) return fallback_->allocate(n);
  const size_t size = (n + kPage - 1) / kPage * kPage;
  std::lock_guard<std::mutex> lock(mu_);
  Block* b = take_whole(size);
  if (b) {
    ++stats_.hits;
  } else {
    b = assemble(size);
    ++stats_.misses;
  }
  stats_.live_bytes += static_cast<int64_t>(b->size);
  stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
  // Never more mapped than the high-water mark of live blocks: what assemble() could not use
  // (a remainder too small to move) goes back to the system, oldest first.
  while (!lru_.empty() && stats_.live_bytes + stats_.cached_bytes > stats_.peak_live_bytes) evict_oldest();
  stats_.peak_mapped_bytes = std::max(stats_.peak_mapped_bytes, stats_.live_bytes + stats_.cached_bytes);
  return {b->base, b, &release_block, c10::Device(c10::DeviceType::CPU)};
}

// A cached block of this size (up to 1/32 larger), whole: no page moves, no faults.
Block* HostBlockCache::take_whole(size_t size) {
  auto it = free_.lower_bound(size);
  if (it == free_.end() || it->first > size + size / 32) return nullptr;
  Block* b = *it->second;
  uncache(b);
  return b;
}

// A new range whose pages are moved (mremap: the kernel hands the physical pages over, no fault
// and no zeroing) from the largest cached blocks, a block's front first; only what the cache
// cannot cover is faulted in fresh. A cached block's unused rest stays cached.
Block* HostBlockCache::assemble(size_t size) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    while (!lru_.empty()) evict_oldest();  // what is cached may be what the system lacks
    p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  TORCH_CHECK_WITH(OutOfMemoryError, p != MAP_FAILED, "host allocation of ", size, " bytes failed: ",
                   std::strerror(errno));
  auto* b = new Block{this, static_cast<char*>(p), size, {}, {}, {}};
  size_t off = 0;
  while (size - off >= kMinMove && !free_.empty()) {
    Block* c = *std::prev(free_.end())->second;
    uncache(c);
    size_t used = 0, k = 0;
    while (k < c->segs.size() && size - off >= kMinMove) {
      Seg& s = c->segs[k];
      const size_t take = std::min(s.len, size - off);
      void* moved = mremap(c->base + s.off, take, take, MREMAP_MAYMOVE | MREMAP_FIXED, b->base + off);
      if (moved == MAP_FAILED) {
        munmap(c->base + s.off, take);  // (out of mappings): the fresh pages stay in its place
      } else {
        stats_.moved_bytes += static_cast<int64_t>(take);
      }
      b->segs.push_back({off, take});
      off += take;
      used = s.off + take;
      if (take < s.len) {
        s.off += take;
        s.len -= take;
        break;
      }
      ++k;
    }
    c->segs.erase(c->segs.begin(), c->segs.begin() + static_cast<std::ptrdiff_t>(k));
    if (used == c->size) {
      delete c;
      continue;
    }
    // The rest [used, size) of c, still mapped.
    c->base += used;
    c->size -= used;
    for (Seg& s : c->segs) s.off -= used;
    if (c->size >= min_bytes_) {
      cache(c);
    } else {
      munmap(c->base, c->size);
      delete c;
    }
  }
  if (off < size) b->segs.push_back({off, size - off});
  stats_.fresh_bytes += static_cast<int64_t>(size - off);
  return b;
}

void HostBlockCache::give_back(Block* b) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.live_bytes -= static_cast<int64_t>(b->size);
  cache(b);
}

void HostBlockCache::cache(Block* b) {  // under mu_
  lru_.push_back(b);
  b->in_lru = std::prev(lru_.end());
  b->in_free = free_.emplace(b->size, b->in_lru);
  stats_.cached_bytes += static_cast<int64_t>(b->size);
}

void HostBlockCache::uncache(Block* b) {  // under mu_
  free_.erase(b->in_free);
  lru_.erase(b->in_lru);
  stats_.cached_bytes -= static_cast<int64_t>(b->size);
}

void HostBlockCache::evict_oldest() {  // under mu_
  Block* b = lru_.front();
  uncache(b);
  munmap(b->base, b->size);
  delete b;
}

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
