// The per-rank memory plan `kiln plan` prints: what kiln's own code keeps at its peak, term by term,
// in bytes. Each term names the code that holds it (models/llama.cpp's saved tensors per attention
// path and recomputation mode, the chunked head + loss of models/ops/linear_cross_entropy.cpp,
// parallel/zero.cpp's flat fp32 buffers per stage, the ZeRO-3 gathered units, the runtime's own
// resident size). bench/plan.sh measures it against training runs.
#pragma once
#include <cstdint>
#include <string>

namespace kiln {

struct Config;

// One rank's memory at the moment its step peaks. The per-phase totals are the candidates; `peak`
// is their maximum and `peak_phase` names it.
struct MemoryPlan {
  // Held for the whole run.
  double runtime = 0;    // the process before training: LibTorch, MPI, thread pools (CPU resident size)
  double params = 0;     // the model's tensors in the compute dtype (ZeRO-3: the rank's kept shard)
  double optimizer = 0;  // fp32 master, exp_avg, exp_avg_sq, decay mask (parallel/zero.cpp)
  double data = 0;       // the loader's prefetched batches (ids, labels, positions, weights)
  // The step's working set.
  double grads = 0;           // parameter gradients at their most (stage 2: 1/dp + a unit)
  double grad_flat = 0;       // the flat fp32 gradient the optimizer reduces into (its kept range)
  double gathered = 0;        // ZeRO-3: the gathered and prefetched units, and a unit's flat copy
  double activations = 0;     // tensors autograd saves for backward, every layer of the micro-batch
  double attention_mask = 0;  // packed rows or ALiBi without varlen: masks, per-layer copies saved
  double loss = 0;            // the head's gradients held from the chunked loss, its chunk buffers
  double layer_backward = 0;  // the deepest layer's backward: its recomputed tensors and gradients
  // Phase totals.
  double forward_end = 0;  // after the loss: activations, mask, head gradients
  double backward = 0;     // first layer of backward: the above + the layer's working set
  double reduce = 0;       // after backward: every gradient + the flat buffer
  double peak = 0;
  std::string peak_phase;
  // Tensor parallel: activations with and without sequence parallel (the printed comparison).
  double activations_sp = 0, activations_no_sp = 0;
};

// `runtime_bytes`: the process's resident size before training (resident_bytes_now() in the
// `kiln plan` process, which is the same binary with the same libraries loaded).
MemoryPlan plan_memory(const Config& cfg, int64_t world, double runtime_bytes);

// This process's resident set now (VmRSS), in bytes; 0 where /proc is not there.
double resident_bytes_now();

// What a training process holds beyond an idle `kiln plan` of the same binary: the intra-op
// thread pool, the loader thread, MPI's shared-memory transport per peer (bytes).
double training_runtime_extra(int64_t world, bool cuda);

}  // namespace kiln
