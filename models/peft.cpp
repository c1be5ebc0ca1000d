// PEFT adapter directories: adapter_config.json + adapter_model.safetensors.
#include "models/peft.h"

#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "models/safetensors.h"
#include "base/error.h"
#include "base/file_io.h"

namespace kiln {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::string kPrefix = "base_model.model.";
const char* const kConfigFile = "adapter_config.json";
const char* const kWeightsFile = "adapter_model.safetensors";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

json config_json(const PeftConfig& c) {
  json j = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"r", c.r},
            {"lora_alpha", c.alpha},
            {"lora_dropout", c.dropout},
            {"use_rslora", c.rslora},
            {"use_dora", c.dora},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"inference_mode", true},
            {"modules_to_save", nullptr},
            {"layers_to_transform", nullptr},
            {"rank_pattern", json::object()},
            {"alpha_pattern", json::object()},
            {"revision", nullptr}};
  if (c.target_modules.size() == 1 && c.target_modules[0] == "all-linear")
    j["target_modules"] = "all-linear";
  else
    j["target_modules"] = c.target_modules;
  j["base_model_name_or_path"] = c.base_model.empty() ? json(nullptr) : json(c.base_model);
  j["init_lora_weights"] = c.init == "gaussian" ? json("gaussian") : json(true);
  return j;
}

// Typed access to adapter_config.json; null counts as absent, as PEFT treats it.
class Fields {
 public:
  Fields(const json& j, std::string path) : j_(j), path_(std::move(path)) {}
  bool has(const char* k) const { return j_.contains(k) && !j_.at(k).is_null(); }
  [[noreturn]] void bad(const char* k, const std::string& what) const {
    user_error(path_, ": ", k, ": ", what);
  }
  const json& at(const char* k) const {
    if (!has(k)) user_error(path_, ": missing required key '", k, "'");
    return j_.at(k);
  }
  double number(const char* k) const {
    if (!at(k).is_number()) bad(k, "expected a number");
    return at(k).get<double>();
  }
  bool boolean(const char* k, bool dflt) const {
    if (!has(k)) return dflt;
    if (!j_.at(k).is_boolean()) bad(k, "expected true or false");
    return j_.at(k).get<bool>();
  }
  // Absent, null, {} and [] all mean "not used".
  bool empty(const char* k) const { return !has(k) || j_.at(k).empty(); }

 private:
  const json& j_;
  std::string path_;
};

PeftConfig parse_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) user_error(path, ": cannot open (a PEFT adapter directory holds adapter_config.json)");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    user_error(path, ": not valid JSON: ", e.what());
  }
  if (!j.is_object()) user_error(path, ": expected a JSON object");
  Fields f(j, path);
  if (!f.at("peft_type").is_string() || f.at("peft_type").get<std::string>() != "LORA")
    f.bad("peft_type", str(f.at("peft_type").dump(), "; valid: \"LORA\""));
  PeftConfig c;
  double r = f.number("r");
  if (r < 1 || r != static_cast<double>(static_cast<int64_t>(r)))
    f.bad("r", str(r, "; valid: an integer >= 1"));
  c.r = static_cast<int64_t>(r);
  c.alpha = f.has("lora_alpha") ? f.number("lora_alpha") : 8.0;  // PEFT's default
  if (!(c.alpha > 0)) f.bad("lora_alpha", str(c.alpha, "; valid: > 0"));
  c.dropout = f.has("lora_dropout") ? f.number("lora_dropout") : 0.0;
  c.rslora = f.boolean("use_rslora", false);
  c.dora = f.boolean("use_dora", false);
  for (const char* k : {"fan_in_fan_out", "lora_bias", "use_qalora"})
    if (f.boolean(k, false)) f.bad(k, "true is not supported; valid: false");
  if (f.has("bias") && f.at("bias") != "none")
    f.bad("bias", str(f.at("bias").dump(), " is not supported; valid: \"none\""));
  for (const char* k : {"rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"})
    if (!f.empty(k)) f.bad(k, str(j.at(k).dump(), " is not supported; valid: none"));
  if (f.has("target_modules")) {
    const json& t = j.at("target_modules");
    if (t.is_string()) {
      c.target_modules = {t.get<std::string>()};
    } else if (t.is_array()) {
      for (const auto& e : t) {
        if (!e.is_string()) f.bad("target_modules", "expected a list of module names");
        c.target_modules.push_back(e.get<std::string>());
      }
    } else {
      f.bad("target_modules", "expected a list of module names or \"all-linear\"");
    }
  }
  if (f.has("base_model_name_or_path") && j.at("base_model_name_or_path").is_string())
    c.base_model = j.at("base_model_name_or_path").get<std::string>();
  if (f.has("init_lora_weights") && j.at("init_lora_weights") == "gaussian") c.init = "gaussian";
  return c;
}

}  // namespace

std::string peft_tensor_name(const std::string& module, LoraRole role) {
  switch (role) {
    case LoraRole::A:
      return kPrefix + module + ".lora_A.weight";
    case LoraRole::B:
      return kPrefix + module + ".lora_B.weight";
    case LoraRole::Magnitude:
      return kPrefix + module + ".lora_magnitude_vector";
  }
  KILN_CHECK(false, "unknown LoraRole");
  return {};
}

void write_peft_adapter(const std::string& dir, const PeftConfig& config, const NamedAdapters& adapters) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [module, a] : adapters) {
    KILN_CHECK(a->options().rank() == config.r && a->options().dora() == config.dora, "adapter ", module,
               " does not match the PEFT config");
    tensors.emplace_back(peft_tensor_name(module, LoraRole::A), a->lora_A.detach());
    tensors.emplace_back(peft_tensor_name(module, LoraRole::B), a->lora_B.detach());
    if (a->options().dora())
      tensors.emplace_back(peft_tensor_name(module, LoraRole::Magnitude), a->lora_magnitude_vector.detach());
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) user_error(dir, ": cannot create directory: ", ec.message());
  // The weights first and the config last: a directory with a config is complete.
  write_safetensors(dir + "/" + kWeightsFile, tensors, {{"format", "pt"}});
  write_file_atomic(dir + "/" + kConfigFile, config_json(config).dump(2) + "\n");
}

PeftAdapter read_peft_adapter(const std::string& dir) {
  PeftAdapter out;
  out.dir = dir;
  out.config = parse_config(dir + "/" + kConfigFile);
  SafetensorsFile f(dir + "/" + kWeightsFile);
  const struct {
    const char* suffix;
    LoraRole role;
  } kinds[] = {{".lora_A.weight", LoraRole::A},
               {".lora_B.weight", LoraRole::B},
               {".lora_magnitude_vector", LoraRole::Magnitude},
               {".lora_magnitude_vector.weight", LoraRole::Magnitude}};  // older PEFT
  for (const std::string& name : f.names()) {
    bool matched = false;
    for (const auto& k : kinds) {
      if (name.rfind(kPrefix, 0) != 0 || !ends_with(name, k.suffix)) continue;
      std::string module = name.substr(kPrefix.size(), name.size() - kPrefix.size() - std::strlen(k.suffix));
      PeftModuleTensors& m = out.modules[module];
      at::Tensor t = f.tensor(name);
      (k.role == LoraRole::A ? m.lora_A : k.role == LoraRole::B ? m.lora_B : m.magnitude) = t;
      matched = true;
      break;
    }
    if (!matched)
      user_error(f.path(), ": tensor '", name, "': not a LoRA tensor; valid: ", kPrefix,
                 "MODULE.lora_A.weight | .lora_B.weight | .lora_magnitude_vector");
  }
  for (const auto& [module, m] : out.modules) {
    if (!m.lora_A.defined() || !m.lora_B.defined())
      user_error(f.path(), ": module '", module, "' has only ", m.lora_A.defined() ? "lora_A" : "lora_B",
                 "; valid: both lora_A and lora_B");
    if (m.magnitude.defined() != out.config.dora)
      user_error(f.path(), ": module '", module, "' ", m.magnitude.defined() ? "has" : "lacks",
                 " lora_magnitude_vector but adapter_config.json has use_dora ",
                 out.config.dora ? "true" : "false");
  }
  return out;
}

void load_peft_adapter(const PeftAdapter& src, const NamedAdapters& adapters) {
  const std::string cfg_path = src.dir + "/" + kConfigFile, file = src.dir + "/" + kWeightsFile;
  const PeftConfig& c = src.config;
  std::set<std::string> used;
  for (const auto& [module, a] : adapters) {
    const LoraOptions& o = a->options();
    if (o.rank() != c.r)
      user_error(cfg_path, ": r is ", c.r, " but lora.rank is ", o.rank(), "; they must agree");
    if (o.alpha() != c.alpha)
      user_error(cfg_path, ": lora_alpha is ", c.alpha, " but lora.alpha is ", o.alpha(),
                 "; they must agree");
    if (o.rslora() != c.rslora)
      user_error(cfg_path, ": use_rslora is ", c.rslora ? "true" : "false", " but lora.rslora is ",
                 o.rslora() ? "true" : "false", "; they must agree");
    if (o.dora() != c.dora)
      user_error(cfg_path, ": use_dora is ", c.dora ? "true" : "false", " but lora.dora is ",
                 o.dora() ? "true" : "false", "; they must agree");
    auto it = src.modules.find(module);
    if (it == src.modules.end())
      user_error(file, ": no tensors for module '", module, "' (", peft_tensor_name(module, LoraRole::A),
                 "); the adapter targets other modules than lora.targets");
    used.insert(module);
    const PeftModuleTensors& m = it->second;
    auto copy = [&](const at::Tensor& dst, const at::Tensor& t, LoraRole role) {
      const std::vector<int64_t> want = a->global_shape(role);
      if (t.sizes() != at::IntArrayRef(want))
        user_error(file, ": tensor '", peft_tensor_name(module, role), "': shape ", shape_str(t.sizes()),
                   "; valid: ", shape_str(want));
      torch::NoGradGuard no_grad;
      dst.copy_(a->local_slice(role, t));  // tensor parallel: this rank's slice
    };
    copy(a->lora_A, m.lora_A, LoraRole::A);
    copy(a->lora_B, m.lora_B, LoraRole::B);
    if (o.dora()) copy(a->lora_magnitude_vector, m.magnitude, LoraRole::Magnitude);
  }
  for (const auto& [module, m] : src.modules)
    if (!used.count(module))
      user_error(file, ": module '", module, "' has no adapter in this model; lora.targets must cover it");
}

}  // namespace kiln
