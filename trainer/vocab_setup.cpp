// Weight sources with vocabulary growth (see vocab_setup.h).
#include "trainer/vocab_setup.h"

#include <map>

#include "models/hf.h"
#include "models/vocab_resize.h"
#include "models/weight_source.h"
#include "trainer/checkpoint.h"

namespace kiln {
namespace {

using Shapes = std::map<std::string, std::vector<int64_t>>;

Shapes hf_vocab_shapes(const std::string& dir) {
  HfWeights w(dir);
  Shapes out;
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"})
    if (w.contains(name)) out[name] = w.shape(name);
  return out;
}

Shapes checkpoint_vocab_shapes(const std::string& dir) {
  Shapes out;
  for (const auto& [name, shape] : checkpoint_tensors(dir))
    if (is_vocab_tensor(name)) out[name] = shape;
  return out;
}

VocabResizeOptions options(const ModelConfig& model, uint64_t seed) { return {model.vocab_init, seed}; }

}  // namespace

std::unique_ptr<WeightSource> hf_source_with_vocab_growth(const std::string& dir,
                                                          const TensorShapes& model_shapes,
                                                          const ModelConfig& model, uint64_t seed) {
  const Shapes stored = hf_vocab_shapes(dir);
  return vocab_growth_source(hf_weight_source(dir, stored_vocab_shapes(model_shapes, stored, "hf:" + dir)),
                             stored, options(model, seed));
}

std::unique_ptr<WeightSource> checkpoint_source_with_vocab_growth(const std::string& dir,
                                                                  const TensorShapes& model_shapes,
                                                                  const ModelConfig& model, uint64_t seed) {
  const Shapes stored = checkpoint_vocab_shapes(dir);
  stored_vocab_shapes(model_shapes, stored, dir);  // refuses a checkpoint with more rows than the model
  return vocab_growth_source(checkpoint_weights_source(dir), stored, options(model, seed));
}

int64_t init_vocab_rows(const ModelConfig& model) {
  const std::string& init = model.init_from;
  Shapes stored;
  if (init.rfind("hf:", 0) == 0) stored = hf_vocab_shapes(init.substr(3));
  if (init.rfind("ckpt:", 0) == 0) stored = checkpoint_vocab_shapes(resolve_checkpoint(init.substr(5)));
  auto it = stored.find("model.embed_tokens.weight");
  return it == stored.end() ? 0 : it->second.at(0);
}

}  // namespace kiln
