// Sample formats: JSONL line -> Sample (see sample_format.h).
#include "data/sample_format.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "base/error.h"

namespace kiln {

namespace {

using nlohmann::json;

const std::string& get_string(const json& j, const char* key, const std::string& fmt) {
  auto it = j.find(key);
  if (it == j.end()) throw SampleError(str("missing field \"", key, "\" (format ", fmt, ")"));
  if (!it->is_string()) throw SampleError(str("field \"", key, "\" must be a string, got ", it->type_name()));
  return it->get_ref<const std::string&>();
}

std::string opt_string(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  if (!it->is_string()) throw SampleError(str("field \"", key, "\" must be a string, got ", it->type_name()));
  return it->get<std::string>();
}

// TeleChat keeps the history inline: <_user>q1<_bot>a1<_end><_user>q2<_bot>, then `output`.
void parse_telechat_input(const std::string& input, const std::string& output, Sample& s) {
  static const std::string kUser = "<_user>", kBot = "<_bot>", kEnd = "<_end>";
  if (input.find(kUser) == std::string::npos) {
    s.turns.push_back({"user", input});
    s.turns.push_back({"assistant", output});
    return;
  }
  size_t pos = 0;
  while (true) {
    if (input.compare(pos, kUser.size(), kUser) != 0)
      throw SampleError(str("field \"input\": expected <_user> at byte ", pos,
                            " (history is <_user>q<_bot>a<_end>... ending with <_user>q<_bot>)"));
    pos += kUser.size();
    const size_t bot = input.find(kBot, pos);
    if (bot == std::string::npos) {  // the final <_bot> may be left out
      s.turns.push_back({"user", input.substr(pos)});
      break;
    }
    s.turns.push_back({"user", input.substr(pos, bot - pos)});
    pos = bot + kBot.size();
    if (pos == input.size()) break;
    const size_t end = input.find(kEnd, pos);
    if (end == std::string::npos)
      throw SampleError(str("field \"input\": the answer at byte ", pos, " lacks its <_end>"));
    s.turns.push_back({"assistant", input.substr(pos, end - pos)});
    pos = end + kEnd.size();
    if (pos == input.size())
      throw SampleError("field \"input\": ends with an answer; the last turn must be <_user>q<_bot>");
  }
  s.turns.push_back({"assistant", output});
}

}  // namespace

const std::vector<std::string>& sample_formats() {
  static const std::vector<std::string> f = {"text", "alpaca", "telechat", "firefly", "messages"};
  return f;
}

std::string detect_format(const json& j) {
  if (!j.is_object()) return "";
  if (j.contains("text")) return "text";
  if (j.contains("conversation")) return "firefly";
  if (j.contains("messages")) return "messages";
  if (j.contains("instruction")) return "alpaca";
  if (j.contains("input") && j.contains("output")) return "telechat";
  return "";
}

namespace {

// A strict scanner over one JSON line, for parse_text_line: accepts a subset of what nlohmann
// accepts (so a line it takes never differs from nlohmann's reading of it).
struct FlatJson {
  const char* p;
  const char* end;
  void ws() {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
  }
  bool lit(const char* w, size_t n) {
    if (size_t(end - p) < n || std::memcmp(p, w, n) != 0) return false;
    p += n;
    return true;
  }
  static int hex(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
  }
  bool u4(unsigned& v) {
    if (end - p < 4) return false;
    v = 0;
    for (int k = 0; k < 4; ++k) {
      const int h = hex(p[k]);
      if (h < 0) return false;
      v = v * 16 + static_cast<unsigned>(h);
    }
    p += 4;
    return true;
  }
  static void utf8(unsigned cp, std::string& out) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  // A string (p at its opening quote), unescaped into out (when out is not null).
  bool string(std::string* out) {
    if (p >= end || *p != '"') return false;
    ++p;
    while (p < end) {
      const char* q = p;
      while (q < end && *q != '"' && *q != '\\' && static_cast<unsigned char>(*q) >= 0x20) ++q;
      if (out) out->append(p, q);
      p = q;
      if (p >= end || static_cast<unsigned char>(*p) < 0x20) return false;  // unterminated, or a raw control
      if (*p == '"') {
        ++p;
        return true;
      }
      ++p;  // a backslash
      if (p >= end) return false;
      const char e = *p++;
      char c = 0;
      switch (e) {
        case '"':
          c = '"';
          break;
        case '\\':
          c = '\\';
          break;
        case '/':
          c = '/';
          break;
        case 'b':
          c = '\b';
          break;
        case 'f':
          c = '\f';
          break;
        case 'n':
          c = '\n';
          break;
        case 'r':
          c = '\r';
          break;
        case 't':
          c = '\t';
          break;
        case 'u': {
          unsigned cp;
          if (!u4(cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return false;  // a lone low surrogate
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned lo;
            if (!lit("\\u", 2) || !u4(lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          if (out) utf8(cp, *out);
          continue;
        }
        default:
          return false;
      }
      if (out) *out += c;
    }
    return false;
  }
  bool digits() {
    const char* q = p;
    while (p < end && *p >= '0' && *p <= '9') ++p;
    return p > q;
  }
  bool number() {
    if (p < end && *p == '-') ++p;
    if (p < end && *p == '0') {
      ++p;
    } else if (!(p < end && *p >= '1' && *p <= '9') || !digits()) {
      return false;
    }
    if (p < end && *p == '.' && (++p, !digits())) return false;
    if (p < end && (*p == 'e' || *p == 'E')) {
      ++p;
      if (p < end && (*p == '+' || *p == '-')) ++p;
      if (!digits()) return false;
    }
    return true;
  }
  bool scalar() {
    if (p >= end) return false;
    if (*p == '"') return string(nullptr);
    if (*p == 't') return lit("true", 4);
    if (*p == 'f') return lit("false", 5);
    if (*p == 'n') return lit("null", 4);
    return number();
  }
};

}  // namespace

bool parse_text_line(const std::string& line, Sample& s) {
  FlatJson j{line.data(), line.data() + line.size()};
  j.ws();
  if (!j.lit("{", 1)) return false;
  bool seen = false;
  std::string key;
  j.ws();
  if (!j.lit("}", 1)) {
    while (true) {
      key.clear();
      if (!j.string(&key)) return false;
      j.ws();
      if (!j.lit(":", 1)) return false;
      j.ws();
      if (key == "text") {
        if (seen || j.p >= j.end || *j.p != '"') return false;  // a repeated or non-string "text"
        seen = true;
        s.text.clear();
        if (!j.string(&s.text)) return false;
      } else if (!j.scalar()) {
        return false;
      }
      j.ws();
      if (j.lit("}", 1)) break;
      if (!j.lit(",", 1)) return false;
      j.ws();
    }
  }
  j.ws();
  if (j.p != j.end || !seen || s.text.empty()) return false;
  s.is_text = true;
  return true;
}

Sample parse_sample(const json& j, const std::string& format) {
  if (!j.is_object()) throw SampleError(str("expected a JSON object, got ", j.type_name()));
  Sample s;
  if (format == "text") {
    s.is_text = true;
    s.text = get_string(j, "text", format);
    if (s.text.empty()) throw SampleError("field \"text\" is empty");
  } else if (format == "alpaca") {
    std::string user = get_string(j, "instruction", format);
    const std::string input = opt_string(j, "input");
    if (!input.empty()) user += "\n" + input;
    s.system = opt_string(j, "system");
    s.turns.push_back({"user", user});
    s.turns.push_back({"assistant", get_string(j, "output", format)});
  } else if (format == "telechat") {
    parse_telechat_input(get_string(j, "input", format), get_string(j, "output", format), s);
  } else if (format == "firefly") {
    auto it = j.find("conversation");
    if (it == j.end()) throw SampleError("missing field \"conversation\" (format firefly)");
    if (!it->is_array() || it->empty())
      throw SampleError("field \"conversation\" must be a non-empty array of {human, assistant}");
    s.system = opt_string(j, "system");
    for (const auto& t : *it) {
      if (!t.is_object())
        throw SampleError(str("field \"conversation\": each turn must be an object, got ", t.type_name()));
      s.turns.push_back({"user", get_string(t, "human", format)});
      s.turns.push_back({"assistant", get_string(t, "assistant", format)});
    }
  } else if (format == "messages") {
    auto it = j.find("messages");
    if (it == j.end()) throw SampleError("missing field \"messages\" (format messages)");
    if (!it->is_array() || it->empty())
      throw SampleError("field \"messages\" must be a non-empty array of {role, content}");
    for (const auto& m : *it) {
      if (!m.is_object())
        throw SampleError(str("field \"messages\": each message must be an object, got ", m.type_name()));
      const std::string& role = get_string(m, "role", format);
      const std::string& content = get_string(m, "content", format);
      if (role == "system") {
        if (!s.turns.empty()) throw SampleError("a system message must come first");
        s.system = content;
      } else if (role == "user" || role == "assistant") {
        const std::string expect =
            s.turns.empty() || s.turns.back().role == "assistant" ? "user" : "assistant";
        if (role != expect)
          throw SampleError(str("message ", s.turns.size() + 1, " has role ", role, "; expected ", expect,
                                " (user and assistant alternate, starting with user)"));
        s.turns.push_back({role, content});
      } else {
        throw SampleError(str("unknown role \"", role, "\" (expected system, user or assistant)"));
      }
    }
    if (s.turns.empty() || s.turns.back().role != "assistant")
      throw SampleError("the last message must be from the assistant");
  } else {
    throw SampleError(str("unknown format \"", format, "\""));
  }
  return s;
}

void check_utf8(const std::string& line) {
  const auto* p = reinterpret_cast<const unsigned char*>(line.data());
  const size_t n = line.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len != 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (p[i + k] & 0xC0) == 0x80;
    if (ok && len == 2) ok = c >= 0xC2;  // overlong
    if (ok && len == 3) {
      const unsigned cp = ((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
      ok = cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF);  // overlong, surrogates
    }
    if (ok && len == 4) {
      const unsigned cp =
          ((c & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
      ok = cp >= 0x10000 && cp <= 0x10FFFF;
    }
    if (!ok) throw SampleError(str("invalid UTF-8 at byte ", i + 1));
    i += len;
  }
}

}  // namespace kiln
