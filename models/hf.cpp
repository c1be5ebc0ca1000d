// Hugging Face import/export: config.json parsing, weight loading (single file or shards,
// Baichuan W_pack split) and atomic LlamaForCausalLM export. See hf.h.
#include "models/hf.h"

#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "models/safetensors.h"
#include "models/weight_source.h"
#include "base/error.h"
#include "base/file_io.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// "a, b, c (and 7 more)"
std::string some_names(const std::vector<std::string>& names, size_t max_shown = 4) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < max_shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > max_shown) s += str(" (and ", names.size() - max_shown, " more)");
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) user_error(path, ": cannot open");
  try {
    return json::parse(f);
  } catch (const json::exception& e) {
    user_error(path, ": not valid JSON: ", e.what());
  }
}

// Typed access to config.json keys; null counts as absent, as transformers treats it.
class ConfigReader {
 public:
  ConfigReader(const json& obj, std::string path, std::string prefix = "")
      : obj_(obj), path_(std::move(path)), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return obj_.contains(key) && !obj_.at(key).is_null(); }
  const json& at(const char* key) const {
    if (!has(key)) user_error(path_, ": missing required key '", prefix_, key, "'");
    return obj_.at(key);
  }
  int64_t integer(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_integer())
      user_error(path_, ": key '", prefix_, key, "' must be an integer, not ", v.dump());
    return v.get<int64_t>();
  }
  int64_t positive(const char* key) const {
    int64_t v = integer(key);
    if (v <= 0) user_error(path_, ": key '", prefix_, key, "' must be positive, not ", v);
    return v;
  }
  double number(const char* key) const {
    const json& v = at(key);
    if (!v.is_number()) user_error(path_, ": key '", prefix_, key, "' must be a number, not ", v.dump());
    return v.get<double>();
  }
  double number(const char* key, double def) const { return has(key) ? number(key) : def; }
  bool boolean(const char* key, bool def) const {
    if (!has(key)) return def;
    const json& v = obj_.at(key);
    if (!v.is_boolean())
      user_error(path_, ": key '", prefix_, key, "' must be true or false, not ", v.dump());
    return v.get<bool>();
  }
  std::string string(const char* key) const {
    const json& v = at(key);
    if (!v.is_string()) user_error(path_, ": key '", prefix_, key, "' must be a string, not ", v.dump());
    return v.get<std::string>();
  }

 private:
  const json& obj_;
  std::string path_, prefix_;
};

// rope_scaling (v4) or rope_parameters (v5) -> cfg.rope_theta, cfg.rope_scaling.
void read_rope(const json& top, const std::string& path, ModelConfig& cfg) {
  ConfigReader c(top, path);
  cfg.rope_theta = c.number("rope_theta", 10000.0);
  const char* key = c.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  if (!c.has(key)) return;
  const json& r = c.at(key);
  if (!r.is_object()) user_error(path, ": key '", key, "' must be an object, not ", r.dump());
  ConfigReader rr(r, path, std::string(key) + ".");
  if (rr.has("rope_theta")) cfg.rope_theta = rr.number("rope_theta");
  std::string type;
  if (rr.has("rope_type"))
    type = rr.string("rope_type");
  else if (rr.has("type"))
    type = rr.string("type");
  else
    user_error(path, ": missing required key '", key, ".rope_type'");

  RopeScaling& s = cfg.rope_scaling;
  if (type == "default") {
    s = RopeScaling{};
    return;
  }
  if (type == "none" || !parse_choice(type, &s.type))
    user_error(path, ": ", key, ".rope_type '", type,
               "' is not supported (valid: default, linear, dynamic, llama3)");
  s.factor = rr.number("factor");
  if (s.factor < 1.0) user_error(path, ": key '", key, ".factor' must be >= 1, not ", s.factor);
  if (type == "dynamic") {
    // transformers scales the base against max_position_embeddings for dynamic NTK.
    s.original_max_seq_len = cfg.max_seq_len;
  } else if (type == "llama3") {
    s.low_freq_factor = rr.number("low_freq_factor");
    s.high_freq_factor = rr.number("high_freq_factor");
    s.original_max_seq_len = rr.positive("original_max_position_embeddings");
    if (s.high_freq_factor <= s.low_freq_factor)
      user_error(path, ": key '", key, ".high_freq_factor' (", s.high_freq_factor,
                 ") must be larger than low_freq_factor (", s.low_freq_factor, ")");
  }
}


std::string torch_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    case at::kDouble:
      return "float64";
    default:
      return c10::toString(t);
  }
}

json hf_config_json(const ModelConfig& cfg, const std::string& dtype) {
  json rope = nullptr;
  int64_t max_pos = cfg.max_seq_len;
  const RopeScaling& s = cfg.rope_scaling;
  const int64_t orig = s.original_max_seq_len > 0 ? s.original_max_seq_len : cfg.max_seq_len;
  if (s.type == RopeType::linear) {
    rope = {{"rope_type", "linear"}, {"factor", s.factor}};
  } else if (s.type == RopeType::dynamic) {
    rope = {{"rope_type", "dynamic"}, {"factor", s.factor}};
    max_pos = orig;  // transformers' dynamic NTK measures growth against max_position_embeddings
  } else if (s.type == RopeType::llama3) {
    rope = {{"rope_type", "llama3"},
            {"factor", s.factor},
            {"low_freq_factor", s.low_freq_factor},
            {"high_freq_factor", s.high_freq_factor},
            {"original_max_position_embeddings", orig}};
  } else {
    KILN_CHECK(s.type == RopeType::none, "unknown rope scaling type '", s.type, "'");
  }
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"vocab_size", cfg.vocab_size},
              {"hidden_size", cfg.hidden_size},
              {"intermediate_size", cfg.ffn_size()},
              {"num_hidden_layers", cfg.num_layers},
              {"num_attention_heads", cfg.num_heads},
              {"num_key_value_heads", cfg.kv_heads()},
              {"head_dim", cfg.head_dim()},
              {"max_position_embeddings", max_pos},
              {"rms_norm_eps", cfg.norm_eps},
              {"rope_theta", cfg.rope_theta},
              {"rope_scaling", rope},
              {"tie_word_embeddings", cfg.tie_embeddings},
              {"hidden_act", "silu"},
              {"attention_bias", false},
              {"attention_dropout", 0.0},
              {"mlp_bias", false},
              {"initializer_range", cfg.init_std},
              {"use_cache", true},
              {"torch_dtype", dtype}};
}

}  // namespace

// ---------------------------------------------------------------------------------------------

ModelConfig read_hf_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  if (!fs::is_directory(dir))
    user_error(dir, ": not a directory (model.init_from hf:DIR needs an HF model directory)");
  const json j = read_json(path);
  if (!j.is_object()) user_error(path, ": must be a JSON object");
  ConfigReader c(j, path);

  ModelConfig cfg;
  const std::string model_type = c.string("model_type");
  if (!parse_choice(model_type, &cfg.arch))
    user_error(path, ": model_type '", model_type, "' is not supported (valid: llama, baichuan)");
  cfg.vocab_size = c.positive("vocab_size");
  cfg.hidden_size = c.positive("hidden_size");
  cfg.num_layers = c.positive("num_hidden_layers");
  cfg.num_heads = c.positive("num_attention_heads");
  cfg.num_kv_heads = c.has("num_key_value_heads") ? c.positive("num_key_value_heads") : cfg.num_heads;
  cfg.ffn_hidden_size = c.positive("intermediate_size");
  if (model_type == "baichuan" && !c.has("max_position_embeddings"))
    cfg.max_seq_len = c.positive("model_max_length");
  else
    cfg.max_seq_len = c.positive("max_position_embeddings");
  cfg.norm_eps = c.number("rms_norm_eps", 1e-6);
  cfg.tie_embeddings = c.boolean("tie_word_embeddings", false);
  cfg.init_std = c.number("initializer_range", 0.02);
  // Baichuan-13B and Baichuan2-13B (hidden 5120) use ALiBi, the 7B models RoPE.
  cfg.position = (cfg.arch == Arch::baichuan && cfg.hidden_size == 5120) ? Position::alibi : Position::rope;
  read_rope(j, path, cfg);

  if (cfg.hidden_size % cfg.num_heads != 0)
    user_error(path, ": hidden_size ", cfg.hidden_size, " is not divisible by num_attention_heads ",
               cfg.num_heads);
  if (cfg.num_heads % cfg.num_kv_heads != 0)
    user_error(path, ": num_attention_heads ", cfg.num_heads, " is not divisible by num_key_value_heads ",
               cfg.num_kv_heads);
  if (c.has("head_dim") && c.integer("head_dim") != cfg.head_dim())
    user_error(path, ": head_dim ", c.integer("head_dim"),
               " differs from hidden_size / num_attention_heads = ", cfg.head_dim(),
               "; kiln supports only head_dim = hidden_size / num_attention_heads");
  if (c.has("hidden_act") && c.string("hidden_act") != "silu")
    user_error(path, ": hidden_act '", c.string("hidden_act"), "' is not supported (valid: silu)");
  if (c.boolean("attention_bias", false))
    user_error(path, ": attention_bias true is not supported (valid: false)");
  if (c.boolean("mlp_bias", false)) user_error(path, ": mlp_bias true is not supported (valid: false)");
  return cfg;
}

// ---------------------------------------------------------------------------------------------

HfWeights::HfWeights(const std::string& dir) : dir_(dir) {
  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  if (fs::is_regular_file(single)) {
    source_ = single;
    files_.push_back(std::make_shared<SafetensorsFile>(single));
    for (const std::string& name : files_[0]->names()) where_[name] = 0;
    return;
  }
  if (!fs::is_regular_file(index)) {
    if (!fs::is_directory(dir)) user_error(dir, ": not a directory");
    user_error(dir,
               ": has neither model.safetensors nor model.safetensors.index.json (PyTorch .bin "
               "checkpoints are not read; re-save with save_pretrained(safe_serialization=True))");
  }
  source_ = index;
  const json j = read_json(index);
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    user_error(index, ": missing 'weight_map' (an object of tensor name -> shard file)");
  std::map<std::string, size_t> file_index;  // shard file name -> index into files_
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string())
      user_error(index, ": weight_map['", it.key(), "'] must be a file name, not ", it.value().dump());
    const std::string file = it.value().get<std::string>();
    if (file.empty() || file[0] == '/' || file.find("..") != std::string::npos)
      user_error(index, ": weight_map['", it.key(), "'] = '", file, "' must name a file inside ", dir);
    auto [pos, inserted] = file_index.emplace(file, files_.size());
    if (inserted) {
      const std::string shard = dir + "/" + file;
      if (!fs::is_regular_file(shard))
        user_error(index, ": shard '", file, "' (for tensor '", it.key(), "') does not exist");
      files_.push_back(std::make_shared<SafetensorsFile>(shard));
    }
    if (!files_[pos->second]->contains(it.key()))
      user_error(index, ": tensor '", it.key(), "' is mapped to '", file, "', which does not hold it");
    where_[it.key()] = pos->second;
  }
}

std::vector<std::string> HfWeights::names() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const SafetensorsFile& HfWeights::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) user_error(source_, ": tensor '", name, "' not found");
  return *files_[it->second];
}

at::Tensor HfWeights::tensor(const std::string& name) const { return file_of(name).tensor(name); }

std::vector<int64_t> HfWeights::shape(const std::string& name) const {
  return file_of(name).info(name).shape;
}

// ---------------------------------------------------------------------------------------------

// Baichuan2 (model_type baichuan, vocab 125696; Baichuan 1 has 64000) computes logits with a
// NormHead: the L2-normalised rows of lm_head.weight. kiln's plain head loads the normalised rows,
// as the usual Baichuan2 -> Llama conversion does, so the loaded model gives the same logits.
static bool has_norm_head(const std::string& dir) {
  const std::string path = dir + "/config.json";
  if (!fs::is_regular_file(path)) return false;
  const json j = read_json(path);
  if (!j.is_object() || !j.contains("model_type") || !j.contains("vocab_size")) return false;
  return j["model_type"] == "baichuan" && j["vocab_size"] == 125696;
}

namespace {

// An HF directory as a WeightSource: each read narrows the memory-mapped tensor to the requested
// range before converting it, so only those pages are touched.
class HfSource : public WeightSource {
 public:
  // names: every parameter the whole model has (HF names) with its shape; checked up front
  // against the files (missing, shape, dtype, unused tensors), so that a rank reading only its
  // slices still refuses a directory that does not fit the model.
  HfSource(const std::string& dir, const std::vector<std::pair<std::string, std::vector<int64_t>>>& names,
           bool partial)
      : w_(dir), norm_head_(has_norm_head(dir)) {
    std::set<std::string> used;
    std::vector<std::string> missing;
    for (const auto& [name, shape] : names) {
      std::string from;
      const std::vector<int64_t> got = resolve_shape(name, shape, &from, &used);
      if (got.empty() && !shape.empty()) {
        missing.push_back(name);
        continue;
      }
      if (got != shape)
        user_error(from, ": tensor '", name, "': shape ", shape_str(got), " in the file, the model expects ",
                   shape_str(shape), " (does config.json match the model config?)");
    }
    if (!missing.empty())
      user_error(
          w_.source(), ": tensor '", missing[0], "' is missing",
          missing.size() > 1 ? str(" (", missing.size(), " missing in all: ", some_names(missing), ")") : "",
          "; the model needs every one of its parameters");
    if (partial) return;
    bool tied = true;
    for (const auto& [name, shape] : names)
      if (name == "lm_head.weight") tied = false;
    std::vector<std::string> unused;
    for (const std::string& name : w_.names()) {
      if (used.count(name) || ends_with(name, "rotary_emb.inv_freq")) continue;
      if (name == "lm_head.weight" && tied) continue;
      unused.push_back(name);
    }
    if (!unused.empty())
      user_error(w_.source(), ": ", unused.size(), " tensor(s) in the file are not used by the model: ",
                 some_names(unused), " (does config.json match the model config?)");
  }

  std::string describe() const override { return "hf:" + w_.dir(); }

  at::Tensor read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end) override {
    std::string from;
    at::Tensor src = resolve(name, shape, &from);
    if (!at::isFloatingType(src.scalar_type()))
      user_error(from, ": tensor '", name, "': dtype ", c10::toString(src.scalar_type()),
                 " cannot be loaded into a floating-point parameter");
    if (norm_head_ && name == "lm_head.weight") {
      // Only the rows the range touches, each L2-normalised.
      const int64_t cols = src.size(1), r0 = begin / cols, r1 = (end - 1) / cols + 1;
      at::Tensor rows = src.narrow(0, r0, r1 - r0).to(at::kFloat);
      rows = rows / rows.norm(/*p=*/2, /*dim=*/{1}, /*keepdim=*/true).clamp_min(1e-12);
      return rows.reshape({-1}).narrow(0, begin - r0 * cols, end - begin).clone();
    }
    return src.reshape({-1}).narrow(0, begin, end - begin).to(at::kFloat, false, /*copy=*/true);
  }

 private:
  static constexpr const char* kQkv[3] = {"q_proj.weight", "k_proj.weight", "v_proj.weight"};

  // The view of `name` in the files (Baichuan's W_pack (3h, h) = [q; k; v] split by rows).
  at::Tensor resolve(const std::string& name, const std::vector<int64_t>& shape, std::string* from) const {
    if (w_.contains(name)) {
      *from = w_.file_of(name).path();
      return w_.tensor(name);
    }
    for (int part = 0; part < 3; ++part) {
      if (!ends_with(name, std::string("self_attn.") + kQkv[part])) continue;
      const std::string pack = name.substr(0, name.size() - std::string(kQkv[part]).size()) + "W_pack.weight";
      *from = w_.file_of(pack).path();
      return w_.tensor(pack).narrow(/*dim=*/0, /*start=*/part * shape[0], /*length=*/shape[0]);
    }
    user_error(w_.source(), ": tensor '", name, "' is missing");
  }
  // The stored shape of `name` ({} when absent), from headers only.
  std::vector<int64_t> resolve_shape(const std::string& name, const std::vector<int64_t>& shape, std::string* from,
                                     std::set<std::string>* used) const {
    if (w_.contains(name)) {
      *from = w_.file_of(name).path();
      used->insert(name);
      return w_.shape(name);
    }
    for (int part = 0; part < 3; ++part) {
      if (!ends_with(name, std::string("self_attn.") + kQkv[part])) continue;
      const std::string pack = name.substr(0, name.size() - std::string(kQkv[part]).size()) + "W_pack.weight";
      if (!w_.contains(pack)) return {};
      *from = w_.file_of(pack).path();
      const std::vector<int64_t> packed = w_.shape(pack);
      const std::vector<int64_t> want = {3 * shape[0], shape[1]};
      if (packed != want)
        user_error(*from, ": tensor '", pack, "': shape ", shape_str(packed), " in the file, the model expects ",
                   shape_str(want), " (q, k, v stacked)");
      used->insert(pack);
      return shape;
    }
    return {};
  }

  HfWeights w_;
  bool norm_head_;
};

}  // namespace

std::unique_ptr<WeightSource> hf_weight_source(const std::string& dir,
                                               const std::vector<std::pair<std::string, std::vector<int64_t>>>& names,
                                               bool partial) {
  return std::make_unique<HfSource>(dir, names, partial);
}

void load_hf_weights(torch::nn::Module& model, const std::string& dir, bool partial) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> names;
  for (const auto& item : model.named_parameters(/*recurse=*/true))
    names.emplace_back(item.key(), item.value().sizes().vec());
  HfSource source(dir, names, partial);
  materialize(model, source);
}

// ---------------------------------------------------------------------------------------------

std::vector<std::pair<std::string, std::vector<int64_t>>> hf_parameter_shapes(const ModelConfig& cfg) {
  const int64_t h = cfg.hidden_size, v = cfg.vocab_size, f = cfg.ffn_size();
  const int64_t q = cfg.num_heads * cfg.head_dim(), kv = cfg.kv_heads() * cfg.head_dim();
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {v, h}});
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    const std::string p = str("model.layers.", i, ".");
    out.push_back({p + "self_attn.q_proj.weight", {q, h}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.o_proj.weight", {h, q}});
    out.push_back({p + "mlp.gate_proj.weight", {f, h}});
    out.push_back({p + "mlp.up_proj.weight", {f, h}});
    out.push_back({p + "mlp.down_proj.weight", {h, f}});
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "post_attention_layernorm.weight", {h}});
  }
  out.push_back({"model.norm.weight", {h}});
  if (!cfg.tie_embeddings) out.push_back({"lm_head.weight", {v, h}});
  return out;
}

void save_hf(const std::vector<std::pair<std::string, at::Tensor>>& named, const ModelConfig& cfg,
             const std::string& dir, int64_t max_shard_bytes) {
  // The tensors must be exactly the full model: a stage's or a shard's subset is a caller bug.
  const auto expected = hf_parameter_shapes(cfg);
  std::map<std::string, std::vector<int64_t>> want(expected.begin(), expected.end());
  KILN_CHECK(named.size() == expected.size(), "save_hf: got ", named.size(), " tensors, the model has ",
             expected.size());
  std::map<std::string, at::Tensor> by_name;
  for (const auto& [name, t] : named) {
    auto it = want.find(name);
    KILN_CHECK(it != want.end(), "save_hf: '", name, "' is not a parameter of the model");
    KILN_CHECK(t.sizes().vec() == it->second, "save_hf: '", name, "' has shape ", shape_str(t.sizes().vec()),
               ", expected ", shape_str(it->second));
    by_name[name] = t;
  }
  const at::ScalarType dtype = named.empty() ? at::kFloat : named[0].second.scalar_type();
  save_hf_streamed(
      cfg, dtype, [&](const std::string& name) { return by_name.at(name).to(dtype); }, dir, max_shard_bytes);
}

void save_hf_streamed(const ModelConfig& cfg, at::ScalarType dtype,
                      const std::function<at::Tensor(const std::string&)>& fetch, const std::string& dir,
                      int64_t max_shard_bytes) {
  KILN_CHECK(max_shard_bytes > 0, "max_shard_bytes must be positive");
  if (cfg.position == Position::alibi)
    user_error(dir, ": cannot export an ALiBi model (Baichuan-13B) as LlamaForCausalLM, which has only RoPE");
  const auto expected = hf_parameter_shapes(cfg);
  if (fs::exists(dir) && !(fs::is_directory(dir) && fs::is_empty(dir)))
    user_error(dir, ": already exists and is not empty; choose a new output directory");

  // Greedy sharding in transformers' order; a tensor larger than the limit gets a shard of its own.
  auto bytes_of = [&](const std::vector<int64_t>& shape) {
    int64_t n = static_cast<int64_t>(c10::elementSize(dtype));
    for (int64_t d : shape) n *= d;
    return n;
  };
  std::vector<std::vector<size_t>> shards;  // [shard] indices into expected
  int64_t cur = 0, total = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const int64_t b = bytes_of(expected[i].second);
    if (shards.empty() || (cur + b > max_shard_bytes && cur > 0)) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(i);
    cur += b;
    total += b;
  }

  const std::string tmp = dir + ".tmp";
  std::error_code ec;
  remove_tree(tmp);  // a previous export that died half-way
  if (!fs::create_directories(tmp, ec) && ec) user_error(tmp, ": cannot create directory: ", ec.message());

  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    std::string file = "model.safetensors";
    if (shards.size() > 1) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      file = buf;
    }
    std::vector<TensorHeader> part;
    for (size_t i : shards[s]) {
      part.push_back({expected[i].first, dtype, expected[i].second});
      weight_map[expected[i].first] = file;
    }
    write_safetensors_streamed(
        tmp + "/" + file, part, [&](size_t k) { return fetch(part[k].name).to(dtype); }, meta);
  }
  if (shards.size() > 1) {
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(tmp + "/model.safetensors.index.json", index.dump(2) + "\n");
  }
  const std::string dtype_name = torch_dtype_name(dtype);
  write_file_atomic(tmp + "/config.json", hf_config_json(cfg, dtype_name).dump(2) + "\n");
  fsync_dir(tmp);

  fs::rename(tmp, dir, ec);  // replaces an empty DIR
  if (ec) user_error(dir, ": cannot rename ", tmp, " into place: ", ec.message());
  fsync_dir(fs::absolute(dir).parent_path().string());
}

}  // namespace kiln
