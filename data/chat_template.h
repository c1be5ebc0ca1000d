// Chat templates and loss masks: a Sample -> tokens + a per-token "trained" bit.
// Built-in templates: firefly, xuanyuan, llama2, chatml, telechat; `custom` is defined in YAML
// (data.custom_template: bos, default_system, system, user, assistant, end_of_turn, after_turn,
// system_in_first_user, specials). Patterns hold {content}; "<s>"/"</s>" and the template's
// special pieces are inserted by id (looked up by name in the tokenizer), the rest is encoded.
// Masks: text trains every token; SFT trains the assistant's answer and its end-of-turn token,
// on every turn (loss all_turns) or the last one only (last_turn); all_tokens trains everything.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/sample_format.h"

namespace kiln {

class Tokenizer;

struct ChatTemplate {
  std::string name;
  bool bos = true;                    // start every sample with <s>
  std::string default_system;         // used when the sample has no system message
  std::string system;                 // pattern with {content}; "" = the system is dropped
  std::string user;                   // pattern with {content}
  std::string assistant;              // pattern with {content}; text before it is not trained
                                      // (unless only spaces: they go with the answer)
  std::string end_of_turn;            // after each answer, trained
  std::string after_turn;             // after end_of_turn, not trained
  bool system_in_first_user = false;  // llama2: the system block goes inside the first [INST]
  std::vector<std::string> specials;  // pieces inserted by id; the tokenizer must have them
  // The special pieces of the user pattern (telechat: <_user> and <_bot>) are trained labels
  // of every turn whose answer is trained, as TeleChat's loss_fn trains them.
  bool train_role_pieces = false;
};

const std::vector<std::string>& chat_template_names();  // the built-ins, plus "custom"
// A built-in by name, or the custom one from `custom` when name == "custom".
// UserError naming `key` (e.g. "data.template") on an unknown name or a bad custom key.
ChatTemplate chat_template(const std::string& name, const std::map<std::string, std::string>& custom,
                           const std::string& key = "data.template");

struct EncodedSample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;  // 1 = this token is a trained label
};

// Turns samples into tokens + masks under one template and loss mode (all_tokens | all_turns |
// last_turn). Thread-safe after construction (prep runs one per worker thread).
class SampleEncoder {
 public:
  SampleEncoder(const Tokenizer& tok, ChatTemplate tmpl, const std::string& loss);
  // Throws SampleError("no trainable token ...") when nothing would be trained.
  EncodedSample encode(const Sample& s) const;

 private:
  struct Seg {
    int32_t id = -1;  // >= 0: a special piece
    std::string text;
    bool trained = false;
  };
  void append(std::vector<Seg>& segs, const std::string& text, bool trained, int specials_trained = -1) const;
  void append_text(std::vector<Seg>& segs, const std::string& text, bool trained) const;
  void append_filled(std::vector<Seg>& segs, const std::string& pattern, const std::string& content,
                     bool trained, int specials_trained = -1) const;

  const Tokenizer& tok_;
  ChatTemplate tmpl_;
  std::string loss_;
  std::map<std::string, int32_t> special_ids_;  // piece -> id, "<s>" and "</s>" included
};

}  // namespace kiln
