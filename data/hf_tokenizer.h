// The tokenizer half of `kiln export`: what AutoTokenizer.from_pretrained (and vLLM) read next
// to config.json and the safetensors, so that the exported directory loads on its own:
//   tokenizer.model          the run's sentencepiece model, byte for byte
//   tokenizer_config.json    LlamaTokenizer, <s> added, no dummy prefix (as kiln encodes),
//                            the chat template's special pieces as additional special tokens
//   special_tokens_map.json  bos, eos, unk, pad and those pieces
//   generation_config.json   bos/eos/pad ids and the run's generate.* settings
#pragma once
#include <string>

namespace kiln {

struct Config;

// Writes the four files into out_dir (atomically, each). UserError when cfg.tokenizer is set but
// cannot be read; a config without a tokenizer writes generation_config.json only.
void export_tokenizer(const Config& cfg, const std::string& out_dir);

}  // namespace kiln
