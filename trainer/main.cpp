// build/kiln <verb> ...: dispatches to the verbs and turns errors into one line + exit code.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <c10/util/Exception.h>
#include <malloc.h>

#include "parallel/communicator.h"
#include "trainer/cli.h"
#include "base/error.h"
#include "base/host_block_cache.h"
#include "base/log.h"

namespace {

constexpr int kMmapThreshold = 1 << 20;  // bytes; see fix_mmap_threshold()

struct Verb {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

const Verb kVerbs[] = {
    {"train", kiln::cmd_train, "train CONFIG            train (one process, or under mpirun)"},
    {"eval", kiln::cmd_eval, "eval CONFIG             mean loss on data.eval as one JSON line"},
    {"plan", kiln::cmd_plan, "plan CONFIG             validate, print resolved config, size, FLOPs, memory"},
    {"generate", kiln::cmd_generate, "generate CONFIG --prompt TEXT   continue a prompt"},
    {"export", kiln::cmd_export, "export CKPT_DIR --out DIR       write a Hugging Face checkpoint"},
    {"verify", kiln::cmd_verify, "verify CKPT_OR_RUN_DIR          check a checkpoint (sizes, checksums, coverage)"},
    {"prep", kiln::cmd_prep, "prep DATA_JSON --tokenizer MODEL --out DIR   tokenize into a token store"},
    {"tokenizer", kiln::cmd_tokenizer,
     "tokenizer train --input FILES --out PREFIX   train a sentencepiece BPE"},
};

void usage() {
  std::fprintf(stderr, "usage: kiln <verb> [--help] [--set key.path=value ...]\n\nverbs:\n");
  for (const auto& v : kVerbs) std::fprintf(stderr, "  %s\n", v.summary);
}

// Large temporaries (a gathered ZeRO-3 unit, its gradients, the flat buffers: tens of MiB) are
// allocated and freed for every unit of every step. glibc raises its mmap threshold to the size of
// each freed mmapped block (up to 32 MiB), so from then on blocks of that size come from the heap,
// where freed memory stays resident and fragments: on the ZeRO-3 memory bench (bench/) a rank's
// peak grew by 266 MiB, most of one fp32 model copy. A fixed threshold (which also stops the
// dynamic one) gives every block above it back to the system when it is freed. A user's own
// GLIBC_TUNABLES or MALLOC_MMAP_THRESHOLD_ wins.
void fix_mmap_threshold() {
  if (std::getenv("GLIBC_TUNABLES") || std::getenv("MALLOC_MMAP_THRESHOLD_")) return;
  mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
}
// ...and the blocks above it that a step frees are kept for the next request of their size
// (base/host_block_cache.h), so they are not faulted in again every step; the cache never holds
// more than the high-water mark of live blocks, so the peak stays as the fixed threshold makes it.

}  // namespace

int main(int argc, char** argv) {
  fix_mmap_threshold();
  kiln::install_host_block_cache(kMmapThreshold);
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  for (const auto& v : kVerbs) {
    if (std::strcmp(argv[1], v.name) != 0) continue;
    try {
      return v.run(argc, argv);
    } catch (const kiln::UserError& e) {
      std::fprintf(stderr, "%skiln %s: error: %s\n", kiln::rank_prefix().c_str(), v.name, e.what());
      kiln::abort_job(2);  // under mpirun: the whole job ends now, with this status
      return 2;
    } catch (const c10::Error& e) {
      // A LibTorch check: its message without the C++ backtrace.
      std::fprintf(stderr, "%skiln %s: internal error: %s\n", kiln::rank_prefix().c_str(), v.name,
                   e.what_without_backtrace());
      kiln::abort_job(3);
      return 3;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%skiln %s: internal error: %s\n", kiln::rank_prefix().c_str(), v.name, e.what());
      kiln::abort_job(3);
      return 3;
    }
  }
  std::fprintf(stderr, "kiln: unknown verb '%s'\n", argv[1]);
  usage();
  return 2;
}
