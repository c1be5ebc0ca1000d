// A caching allocator for large host tensors (LibTorch's CPU allocator replaced once, at start).
//
// Why: a training step frees and allocates the same large blocks (activations, their gradients,
// gathered ZeRO-3 units, the loss's chunks) every step. kiln fixes glibc's mmap threshold at
// 1 MiB (trainer/main.cpp) so that freed large blocks go back to the system instead of staying
// resident and fragmenting the heap; but then every such block is mapped again, and its pages
// faulted in and zeroed by the kernel, every step (16% of a CPU step's samples in page faults).
//
// This cache keeps freed blocks of at least `min_bytes`. A request of a cached block's size (up
// to 1/32 larger) gets that block back. Any other request gets a new range whose pages are moved
// over from cached blocks (mremap hands the physical pages over: no fault, no zeroing; the
// largest block first, a block's unused rest stays cached), so a step whose tensor sizes differ
// from the last one's still reuses its pages; only what the cache cannot cover is faulted in.
// It never holds memory beyond the high-water mark of live large blocks: after each request,
// cached blocks are released (least recently freed first) until live + cached <= that mark. So
// the process's peak is what it would be without the cache, and from the second step on a step's
// temporaries come from the cache with next to no page faults (bench/RESULTS.md). Smaller blocks
// go to the default allocator.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kiln {

struct HostBlockCacheStats {
  int64_t live_bytes = 0;         // large blocks handed out now
  int64_t cached_bytes = 0;       // large blocks freed and kept
  int64_t peak_live_bytes = 0;    // high-water mark of live_bytes
  int64_t peak_mapped_bytes = 0;  // high-water mark of live + cached
  int64_t hits = 0, misses = 0;   // large requests served by a cached block whole / assembled
  int64_t moved_bytes = 0;        // bytes of assembled requests whose pages came from the cache
  int64_t fresh_bytes = 0;        // bytes of assembled requests mapped fresh (faulted in on use)
};

// Installs the cache as LibTorch's CPU allocator (once; later calls do nothing). KILN_HOST_CACHE=0
// in the environment leaves the default allocator.
void install_host_block_cache(size_t min_bytes = size_t{1} << 20);
bool host_block_cache_installed();
HostBlockCacheStats host_block_cache_stats();
// Releases every cached block to the system (live blocks are untouched).
void host_block_cache_release();

}  // namespace kiln
