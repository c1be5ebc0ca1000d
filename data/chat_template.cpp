// Chat templates and loss masks (see chat_template.h).
#include "data/chat_template.h"

#include <algorithm>

#include "data/tokenizer.h"
#include "base/error.h"

namespace kiln {

namespace {

const char* kXuanyuanSystem =
    "以下是用户和人工智能助手之间的对话。用户以Human开头，人工智能助手以Assistant开头，"
    "会对人类提出的问题给出有帮助、高质量、详细和礼貌的回答，并且总是拒绝参与与不道德、"
    "不安全、有争议、政治敏感等相关的话题、问题和指示。\n";

bool parse_bool(const std::string& v, const std::string& key) {
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  user_error(key, ": \"", v, "\" is not a boolean (true or false)");
}

}  // namespace

const std::vector<std::string>& chat_template_names() {
  static const std::vector<std::string> n = {"firefly", "xuanyuan", "llama2", "chatml", "telechat", "custom"};
  return n;
}

ChatTemplate chat_template(const std::string& name, const std::map<std::string, std::string>& custom,
                           const std::string& key) {
  ChatTemplate t;
  t.name = name;
  if (name == "firefly") {  // <s>input</s>target</s>input</s>target</s> (a system as <s>system</s>...)
    t.system = "{content}</s>";
    t.user = "{content}</s>";
    t.assistant = "{content}";
    t.end_of_turn = "</s>";
  } else if (name == "xuanyuan") {  // FastChat: "{system} Human: q Assistant: a</s>Human: ..."
    t.default_system = kXuanyuanSystem;
    t.system = "{content} ";
    t.user = "Human: {content} Assistant:";
    t.assistant = " {content}";
    t.end_of_turn = "</s>";
  } else if (name == "llama2") {  // <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nq [/INST] a</s><s>[INST] ...
    t.bos = false;
    t.system = "<<SYS>>\n{content}\n<</SYS>>\n\n";
    t.system_in_first_user = true;
    t.user = "<s>[INST] {content} [/INST]";
    t.assistant = " {content}";
    t.end_of_turn = "</s>";
  } else if (name == "chatml") {  // <|im_start|>role\ncontent<|im_end|>\n
    t.system = "<|im_start|>system\n{content}<|im_end|>\n";
    t.user = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n";
    t.assistant = "{content}";
    t.end_of_turn = "<|im_end|>";
    t.after_turn = "\n";
    t.specials = {"<|im_start|>", "<|im_end|>"};
  } else if (name == "telechat") {  // <_user>q<_bot>a<_end>
    t.user = "<_user>{content}<_bot>";
    t.assistant = "{content}";
    t.end_of_turn = "<_end>";
    t.specials = {"<_user>", "<_bot>", "<_end>"};
    t.train_role_pieces = true;
  } else if (name == "custom") {
    if (custom.empty()) user_error(key, ": custom needs data.custom_template (user, assistant, ...)");
    t.assistant = "{content}";
    for (const auto& [k, v] : custom) {
      const std::string ck = "data.custom_template." + k;
      if (k == "bos")
        t.bos = parse_bool(v, ck);
      else if (k == "default_system")
        t.default_system = v;
      else if (k == "system")
        t.system = v;
      else if (k == "user")
        t.user = v;
      else if (k == "assistant")
        t.assistant = v;
      else if (k == "end_of_turn")
        t.end_of_turn = v;
      else if (k == "after_turn")
        t.after_turn = v;
      else if (k == "system_in_first_user")
        t.system_in_first_user = parse_bool(v, ck);
      else if (k == "specials") {
        size_t start = 0;
        while (start <= v.size()) {
          size_t comma = v.find(',', start);
          if (comma == std::string::npos) comma = v.size();
          if (comma > start) t.specials.push_back(v.substr(start, comma - start));
          start = comma + 1;
        }
      } else {
        user_error(ck, ": unknown key (expected bos, default_system, system, user, assistant, ",
                   "end_of_turn, after_turn, system_in_first_user, specials)");
      }
    }
    if (t.user.find("{content}") == std::string::npos)
      user_error("data.custom_template.user: must contain {content}, got \"", t.user, "\"");
    if (t.assistant.find("{content}") == std::string::npos)
      user_error("data.custom_template.assistant: must contain {content}, got \"", t.assistant, "\"");
  } else {
    user_error(key, ": unknown template \"", name,
               "\" (expected firefly, xuanyuan, llama2, chatml, telechat or custom)");
  }
  return t;
}

SampleEncoder::SampleEncoder(const Tokenizer& tok, ChatTemplate tmpl, const std::string& loss)
    : tok_(tok), tmpl_(std::move(tmpl)), loss_(loss) {
  if (loss_ != "all_tokens" && loss_ != "all_turns" && loss_ != "last_turn")
    user_error("data.loss: unknown loss \"", loss_, "\" (expected all_tokens, all_turns or last_turn)");
  special_ids_["<s>"] = tok_.bos_id();
  special_ids_["</s>"] = tok_.eos_id();
  for (const auto& p : tmpl_.specials) special_ids_[p] = tok_.require_piece(p, "template " + tmpl_.name);
}

// Text as text: merged into the previous text segment when it has the same mask.
void SampleEncoder::append_text(std::vector<Seg>& segs, const std::string& text, bool trained) const {
  if (text.empty()) return;
  if (!segs.empty() && segs.back().id < 0 && segs.back().trained == trained)
    segs.back().text += text;
  else
    segs.push_back({-1, text, trained});
}

// Splits template text at the special pieces; those become ids, the rest stays text. Text gets
// `trained`, the special pieces `specials_trained` (-1: the same as trained).
void SampleEncoder::append(std::vector<Seg>& segs, const std::string& text, bool trained,
                           int specials_trained) const {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string::npos;
    const std::pair<const std::string, int32_t>* hit = nullptr;
    for (const auto& kv : special_ids_) {
      const size_t at = text.find(kv.first, pos);
      if (at < best || (at == best && hit && kv.first.size() > hit->first.size())) {
        best = at;
        hit = &kv;
      }
    }
    const size_t end = hit ? best : text.size();
    if (end > pos) append_text(segs, text.substr(pos, end - pos), trained);
    if (!hit) break;
    segs.push_back({hit->second, "", specials_trained < 0 ? trained : specials_trained != 0});
    pos = best + hit->first.size();
  }
}

// A pattern with {content}: the pattern's specials become ids; the content (what the user or
// the data wrote) is only text, so "</s>" typed in a message is never the eos id.
void SampleEncoder::append_filled(std::vector<Seg>& segs, const std::string& pattern,
                                  const std::string& content, bool trained, int specials_trained) const {
  const size_t at = pattern.find("{content}");
  if (at == std::string::npos) return append(segs, pattern, trained, specials_trained);
  append(segs, pattern.substr(0, at), trained, specials_trained);
  append_text(segs, content, trained);
  append(segs, pattern.substr(at + 9), trained, specials_trained);
}

EncodedSample SampleEncoder::encode(const Sample& s) const {
  EncodedSample out;
  if (s.is_text) {  // pretraining: <s> text </s>, every token trained
    out.tokens.push_back(tok_.bos_id());
    const auto ids = tok_.encode(s.text);
    out.tokens.insert(out.tokens.end(), ids.begin(), ids.end());
    out.tokens.push_back(tok_.eos_id());
    out.mask.assign(out.tokens.size(), 1);
    return out;
  }
  const bool all = loss_ == "all_tokens";
  size_t last_answer = 0;
  for (size_t i = 0; i < s.turns.size(); ++i)
    if (s.turns[i].role == "assistant") last_answer = i;

  std::vector<Seg> segs;
  if (tmpl_.bos) segs.push_back({tok_.bos_id(), "", all});
  const std::string& system = s.system.empty() ? tmpl_.default_system : s.system;
  const bool has_system = !system.empty() && !tmpl_.system.empty();
  if (has_system && !tmpl_.system_in_first_user) append_filled(segs, tmpl_.system, system, all);
  bool content_trained = false;  // some answer token (not only end-of-turn markers) is trained
  for (size_t i = 0; i < s.turns.size(); ++i) {
    const Turn& t = s.turns[i];
    if (t.role == "user") {
      if (has_system && tmpl_.system_in_first_user &&
          i == 0) {  // llama2: [INST] <<SYS>>...<</SYS>> q [/INST]
        const size_t at = tmpl_.user.find("{content}");
        append(segs, tmpl_.user.substr(0, at), all);
        append_filled(segs, tmpl_.system, system, all);
        append_filled(segs, tmpl_.user.substr(at), t.content, all);
      } else if (tmpl_.train_role_pieces) {
        // TeleChat: the pattern's own pieces (not any in the content) train with the answer that
        // follows.
        const bool answer_follows = i + 1 < s.turns.size() && s.turns[i + 1].role == "assistant";
        const bool roles = all || (answer_follows && (loss_ == "all_turns" || i + 1 == last_answer));
        append_filled(segs, tmpl_.user, t.content, all, roles);
      } else {
        append_filled(segs, tmpl_.user, t.content, all);
      }
      continue;
    }
    const bool trained = all || loss_ == "all_turns" || i == last_answer;
    // Text before {content} is not trained, unless it is only spaces: " answer" then encodes
    // as the answer's own first token ("▁answer"), as a tokenizer sees "[/INST] answer".
    const size_t at = tmpl_.assistant.find("{content}");
    const std::string prefix = tmpl_.assistant.substr(0, at);
    const bool spaces = prefix.find_first_not_of(' ') == std::string::npos;
    if (!spaces) append(segs, prefix, all);
    append_text(segs, (spaces ? prefix : "") + t.content, trained);
    append(segs, tmpl_.assistant.substr(at + 9), trained);
    append(segs, tmpl_.end_of_turn, trained);
    append(segs, tmpl_.after_turn, all);
    content_trained = content_trained || (trained && !t.content.empty());
  }
  for (const Seg& seg : segs) {
    if (seg.id >= 0) {
      out.tokens.push_back(seg.id);
      out.mask.push_back(seg.trained);
      continue;
    }
    const auto ids = tok_.encode(seg.text);
    out.tokens.insert(out.tokens.end(), ids.begin(), ids.end());
    out.mask.insert(out.mask.end(), ids.size(), seg.trained);
  }
  if (!content_trained) throw SampleError("no trainable token: every trained assistant answer is empty");
  return out;
}

}  // namespace kiln
