// The weight sources of a run whose model.vocab_size is larger than its model.init_from's
// (hf:DIR or ckpt:DIR): the checkpoint is opened for its own vocabulary rows and wrapped so that
// the embedding and head are served with the model's rows (models/vocab_resize.h). A checkpoint
// with as many rows as the model passes through unchanged.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/model_config.h"

namespace kiln {

class WeightSource;
using TensorShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

// `model_shapes`: every parameter of the model with the shape it has here (padded vocabulary).
std::unique_ptr<WeightSource> hf_source_with_vocab_growth(const std::string& dir,
                                                          const TensorShapes& model_shapes,
                                                          const ModelConfig& model, uint64_t seed);
std::unique_ptr<WeightSource> checkpoint_source_with_vocab_growth(const std::string& dir,
                                                                  const TensorShapes& model_shapes,
                                                                  const ModelConfig& model, uint64_t seed);

// Vocabulary rows of model.init_from's embedding (hf:DIR: its tensor's rows; ckpt:DIR: the
// checkpoint's), 0 when the model starts from a random init.
int64_t init_vocab_rows(const ModelConfig& model);

}  // namespace kiln
