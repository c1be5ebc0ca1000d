// `kiln tokenizer extend`: a sentencepiece model grown with the pieces of another one (a model
// trained on the new language's text), as Chinese-LLaMA, Ziya and XuanYuan extended Llama's
// tokenizer. Every base piece keeps its id, score and type; the other model's normal and
// user-defined pieces that the base lacks are appended in their own order, their scores shifted
// below every base score, so the base's merges keep their priority (BPE) and text the base
// already covers with its own pieces encodes as before; control, unknown and byte pieces of the
// other model are skipped (the base has its own).
//
// The model file is read and written through protobuf-c with kiln's schema of the fields touched
// (data/sentencepiece_model.proto): everything else in the file passes through unchanged.
// Debian's libsentencepiece-dev ships no model-proto header, and linking the C++ protobuf runtime
// beside libsentencepiece's embedded copy breaks its version check.
#pragma once
#include <cstdint>
#include <string>

namespace kiln {

// True when this build has protobuf-c (the CMake option that also builds TensorBoard's events).
bool tokenizer_extend_available();

struct TokenizerExtendResult {
  int64_t base_pieces = 0;  // pieces of the base model (they keep ids 0 .. base_pieces-1)
  int64_t added = 0;        // pieces appended
  int64_t duplicates = 0;   // pieces of the other model the base already had
  int64_t skipped = 0;      // control, unknown, byte and unused pieces of the other model
};

// Writes `out_path` (atomically: temp file, fsync, rename) as `base_path` extended by the pieces
// of `extra_path`. UserError naming the file when one is not a sentencepiece model.
TokenizerExtendResult extend_tokenizer(const std::string& base_path, const std::string& extra_path,
                                       const std::string& out_path);

// A serialized ModelProto unpacked and packed again with nothing changed (what extend does to the
// fields it does not touch): tests.
std::string roundtrip_model_proto(const std::string& bytes, const std::string& what);

}  // namespace kiln
