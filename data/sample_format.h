// Sample formats: one JSONL line -> a Sample (pretraining text, or a conversation of turns).
//   text      {"text": "..."}
//   alpaca    {"instruction", "input"?, "output"}
//   telechat  {"input", "output"}; history inline in input: <_user>q1<_bot>a1<_end><_user>q2<_bot>
//   firefly   {"conversation": [{"human", "assistant"}, ...], "system"?}
//   messages  {"messages": [{"role": system|user|assistant, "content"}, ...]}
// Errors are thrown as SampleError (the line-level reason); the caller adds file:line.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln {

// A problem with one line; `what()` is the reason without the location.
class SampleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Turn {
  std::string role;  // "user" | "assistant"
  std::string content;
};

struct Sample {
  bool is_text = false;  // pretraining text: `text` only
  std::string text;
  std::string system;       // optional system message ("" = template default)
  std::vector<Turn> turns;  // alternating user / assistant, ending with assistant
};

// Known format names (without "auto").
const std::vector<std::string>& sample_formats();
// The format a JSON object looks like, or "" when none fits.
std::string detect_format(const nlohmann::json& j);
// Parses one line's JSON in `format` (never "auto"). Throws SampleError.
Sample parse_sample(const nlohmann::json& j, const std::string& format);
// The pretraining fast path: when `line` is a flat JSON object (string, number, true, false or
// null values) with one non-empty string "text", sets s to what parse_sample(json::parse(line),
// "text") gives and returns true, without building a JSON document. false for anything else
// (nested values, escapes it does not take, malformed JSON, no "text"): the caller parses the
// line with nlohmann then, which also names what is wrong.
bool parse_text_line(const std::string& line, Sample& s);
// Throws SampleError when `line` is not valid UTF-8 (names the byte offset).
void check_utf8(const std::string& line);

}  // namespace kiln
