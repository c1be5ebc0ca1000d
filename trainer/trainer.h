// The training loop: model stage, data loader, ZeRO optimizer, schedule, logging, checkpoints.
// One process or many under mpirun; the step is the same code either way.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "trainer/config.h"

namespace kiln {

struct TrainOptions {
  int64_t exit_after = 0;  // stop cleanly (with a checkpoint) after this many steps of this run; 0 = no
};

struct TrainResult {
  int64_t first_step = 0;      // step the run started from (> 0 after a resume)
  int64_t last_step = 0;       // steps completed
  std::vector<double> losses;  // [step - first_step] mean loss over the global batch
};

TrainResult train(const Config& cfg, const TrainOptions& opts = {});

// Mean loss over data.eval: {"loss": ..., "tokens": ...}.
struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;
};
EvalResult evaluate(const Config& cfg);
// The same on a model in hand; with a data-parallel group each rank takes its share of data.eval
// and the result is the global mean (collective over dp).
class LlamaImpl;
class Communicator;
EvalResult evaluate_model(LlamaImpl& model, const Config& cfg, const c10::Device& device, Communicator* dp);

std::string generate_text(const Config& cfg, const std::string& prompt);

}  // namespace kiln
