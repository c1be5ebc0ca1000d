// Sharded, verified, atomic checkpoints (see checkpoint.h).
#include "trainer/checkpoint.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "models/safetensors.h"
#include "models/weight_source.h"
#include "parallel/communicator.h"
#include "base/error.h"
#include "base/file_io.h"
#include "base/log.h"
#include "trainer/run_dir.h"
#include "trainer/state_check.h"
#include "trainer/test_hooks.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace kiln {
namespace {

constexpr int kFormatVersion = 2;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) user_error(path, ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string shard_file_name(int rank, int world) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "shard-%05d-of-%05d.safetensors", rank, world);
  return buf;
}

// xxh3-64 of a file, read in 1 MiB pieces (not mapped, so the pages do not count towards this
// process's resident memory). Sets `bytes`; "" when the file cannot be read.
std::string file_xxh3(const std::string& path, int64_t& bytes) {
  bytes = -1;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  std::vector<char> buf(1 << 20);
  int64_t total = 0;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      ::close(fd);
      XXH3_freeState(st);
      return "";
    }
    if (n == 0) break;
    XXH3_64bits_update(st, buf.data(), static_cast<size_t>(n));
    total += n;
  }
  ::close(fd);
  const uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  bytes = total;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

std::string to_hex(const at::Tensor& bytes_u8) {
  static const char* digits = "0123456789abcdef";
  const uint8_t* p = bytes_u8.data_ptr<uint8_t>();
  std::string s;
  s.reserve(bytes_u8.numel() * 2);
  for (int64_t i = 0; i < bytes_u8.numel(); ++i) {
    s.push_back(digits[p[i] >> 4]);
    s.push_back(digits[p[i] & 15]);
  }
  return s;
}

// Step number of "step-00000040" (-1 for anything else, .tmp included).
int64_t step_of(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() <= 5) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

// Complete step directories under root, newest (highest step) first.
std::vector<fs::path> step_dirs(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return {};
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const int64_t s = step_of(e.path().filename().string());
    if (s >= 0 && e.is_directory()) found.emplace_back(s, e.path());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<fs::path> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

json parse_state_json(const std::string& dir) {
  const std::string path = (fs::path(dir) / "state.json").string();
  if (!fs::exists(path)) user_error(path, ": missing (not a complete checkpoint)");
  json js;
  try {
    js = json::parse(read_file(path));
  } catch (const json::exception& e) {
    user_error(path, ": corrupt checkpoint state (", e.what(), ")");
  }
  if (!js.is_object() || !js.contains("step") || !js["step"].is_number_integer())
    user_error(path, ": corrupt checkpoint state (no integer 'step')");
  const int version = js.value("format_version", 1);
  if (version != kFormatVersion)
    user_error(path, ": checkpoint format ", version, ", this kiln reads format ", kFormatVersion,
               " (sharded); resume it with the kiln that wrote it and export it, or start a new run_dir");
  for (const char* key : {"files", "tensors"})
    if (!js.contains(key) || !js[key].is_object())
      user_error(path, ": corrupt checkpoint state (no '", key, "' object)");
  return js;
}

struct StoredSlice {
  std::string key;  // tensor name inside the file
  TensorSlice slice;
  std::shared_ptr<SafetensorsFile> file;
};

// Every slice of every shard file, with data left unread (views of the mapping on demand).
std::vector<StoredSlice> index_slices(const std::string& dir, const json& state) {
  std::vector<StoredSlice> out;
  for (const auto& [file, info] : state["files"].items()) {
    if (file.rfind("shard-", 0) != 0) continue;
    const std::string path = (fs::path(dir) / file).string();
    auto st = std::make_shared<SafetensorsFile>(path);
    auto it = st->metadata().find("slices");
    if (it == st->metadata().end()) user_error(path, ": no 'slices' metadata; not a kiln checkpoint shard");
    json index;
    try {
      index = json::parse(it->second);
    } catch (const json::exception& e) {
      user_error(path, ": corrupt 'slices' metadata (", e.what(), ")");
    }
    for (const std::string& key : st->names()) {
      if (!index.contains(key)) user_error(path, ": tensor '", key, "' has no slice metadata");
      const json& m = index[key];
      StoredSlice s;
      s.key = key;
      s.file = st;
      try {
        s.slice.name = m.at("name").get<std::string>();
        s.slice.global_shape = m.at("shape").get<std::vector<int64_t>>();
        s.slice.box.offset = m.at("offset").get<std::vector<int64_t>>();
        s.slice.box.length = m.at("length").get<std::vector<int64_t>>();
      } catch (const json::exception& e) {
        user_error(path, ": tensor '", key, "': bad slice metadata (", e.what(), ")");
      }
      if (!box_inside(s.slice.box, s.slice.global_shape))
        user_error(path, ": tensor '", key, "': box ", box_str(s.slice.box), " outside its tensor ",
                   at::IntArrayRef(s.slice.global_shape));
      if (st->info(key).shape != s.slice.box.length || st->info(key).dtype != "F32")
        user_error(path, ": tensor '", key, "': stored shape or dtype differs from its slice");
      out.push_back(std::move(s));
    }
  }
  return out;
}

class CheckpointSource : public WeightSource {
 public:
  // weights: map a parameter name NAME to "master/NAME" (trained) or "weight/NAME" (frozen).
  CheckpointSource(const std::string& dir, bool weights) : dir_(dir), weights_(weights) {
    const json state = parse_state_json(dir);
    for (StoredSlice& s : index_slices(dir, state)) {
      s.slice.data = s.file->tensor(s.key);
      stored_.push_back(std::move(s));
    }
    for (const StoredSlice& s : stored_) {
      by_name_[s.slice.name].push_back(&s.slice);
      if (std::find(files_.begin(), files_.end(), s.file) == files_.end()) files_.push_back(s.file);
    }
  }
  std::string describe() const override { return dir_; }
  at::Tensor read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end) override {
    std::string key = name;
    if (weights_) key = by_name_.count("master/" + name) ? "master/" + name : "weight/" + name;
    auto it = by_name_.find(key);
    if (it == by_name_.end()) user_error(dir_, ": checkpoint has no tensor '", name, "' that the model needs");
    for (const TensorSlice* s : it->second)
      if (s->global_shape != shape)
        user_error(dir_, ": tensor '", name, "' has shape ", at::IntArrayRef(s->global_shape),
                   " in the checkpoint, the model needs ", at::IntArrayRef(shape),
                   " (model.* keys differ from the checkpoint's?)");
    at::Tensor out = at::empty({end - begin}, at::kFloat);
    const int64_t covered = fill_range_from_slices(it->second, shape, begin, end, out);
    // The copy is made: the mapped pages need not stay resident (a rank reads its share only).
    for (const auto& f : files_) f->drop_pages();
    if (covered != end - begin)
      user_error(dir_, ": checkpoint covers ", covered, " of ", end - begin, " requested elements of '", key, "'");
    return out;
  }

 private:
  std::string dir_;
  bool weights_;
  std::vector<StoredSlice> stored_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::vector<const TensorSlice*>> by_name_;
};

// Sum over ranks of a (rows, cols) double table where each rank filled its own row.
at::Tensor gather_rows(Communicator& world, at::Tensor mine_row, int64_t cols) {
  at::Tensor table = at::zeros({world.size(), cols}, at::kDouble);
  table[world.rank()].copy_(mine_row);
  all_reduce_host(world, table, c10::Device(c10::kCPU));
  return table;
}

}  // namespace

std::string checkpoint_root(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

std::string checkpoint_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

void save_checkpoint(const std::string& run_dir, Communicator& world, const CheckpointState& state,
                     const CheckpointShard& shard, const std::string& config_yaml, int64_t keep_last) {
  const fs::path root = checkpoint_root(run_dir);
  const std::string name = checkpoint_dir_name(state.step);
  const fs::path tmp = root / (name + ".tmp");
  const fs::path final_dir = root / name;
  if (world.rank() == 0) {
    fs::create_directories(root);
    remove_tree(tmp.string());  // leftovers of an interrupted save
    fs::create_directories(tmp);
  }
  world.barrier();

  // Every rank: its slices (and its partition of the frozen tensors), each key with its box.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  json index = json::object();
  std::map<std::string, int> count;
  auto add = [&](const TensorSlice& s) {
    const std::string key = s.name + "#" + std::to_string(count[s.name]++);
    tensors.emplace_back(key, s.data.to(at::kFloat).contiguous());
    index[key] = {{"name", s.name}, {"shape", s.global_shape}, {"offset", s.box.offset}, {"length", s.box.length}};
  };
  for (const TensorSlice& s : shard.slices) add(s);
  for (const auto& [pname, t] : shard.frozen) {
    const int64_t n = t.numel(), per = (n + shard.dp_size - 1) / shard.dp_size;
    const int64_t a = std::min(n, per * shard.dp_rank), b = std::min(n, a + per);
    if (a >= b) continue;
    at::Tensor flat = t.detach().reshape({-1}).narrow(0, a, b - a).to(at::kCPU, at::kFloat, false, true);
    for (const TensorSlice& s : slices_of_range("weight/" + pname, t.sizes().vec(), a, b, flat)) add(s);
  }
  const std::string file = shard_file_name(world.rank(), world.size());
  write_safetensors((tmp / file).string(), tensors, {{"slices", index.dump()}, {"format", "kiln"}});
  int64_t bytes = 0;
  const std::string hash = file_xxh3((tmp / file).string(), bytes);
  KILN_CHECK(bytes >= 0, "cannot read back ", (tmp / file).string());
  test_fault_point("shards", state.step);  // tests only

  // Sizes, checksums and RNG states of every rank, to rank 0.
  const uint64_t h = std::stoull(hash, nullptr, 16);
  at::Tensor row = at::tensor({static_cast<double>(bytes), static_cast<double>(h >> 32),
                               static_cast<double>(h & 0xffffffffu)},
                              at::kDouble);
  at::Tensor files = gather_rows(world, row, 3);
  at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();  // uint8
  at::Tensor rngs = gather_rows(world, rng.to(at::kDouble), rng.numel());

  if (world.rank() == 0) {
    write_file_atomic((tmp / "config.yaml").string(), config_yaml);
    json js = {{"format_version", kFormatVersion}, {"step", state.step},     {"data", state.data},
               {"extra", state.extra},             {"layout", state.layout}, {"world_size", world.size()}};
    json tensors_js = json::object();
    for (const auto& [n, shape] : shard.tensors) tensors_js[n] = shape;
    js["tensors"] = tensors_js;
    js["trained"] = shard.trained;
    json rng_js = json::array();
    for (int r = 0; r < world.size(); ++r) rng_js.push_back(to_hex(rngs[r].to(at::kByte).contiguous()));
    js["rng"] = {{"cpu", rng_js}};
    json files_js = json::object();
    for (int r = 0; r < world.size(); ++r) {
      const uint64_t hr = (static_cast<uint64_t>(files[r][1].item<double>()) << 32) |
                          static_cast<uint64_t>(files[r][2].item<double>());
      char hex[17];
      std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(hr));
      files_js[shard_file_name(r, world.size())] = {{"bytes", static_cast<int64_t>(files[r][0].item<double>())},
                                                    {"xxh3_64", hex}};
    }
    int64_t cfg_bytes = 0;
    const std::string cfg_hash = file_xxh3((tmp / "config.yaml").string(), cfg_bytes);
    files_js["config.yaml"] = {{"bytes", cfg_bytes}, {"xxh3_64", cfg_hash}};
    js["files"] = files_js;
    write_file_atomic((tmp / "state.json").string(), js.dump(2));
    test_fault_point("state", state.step);  // tests only
    if (fs::exists(final_dir)) remove_tree(final_dir.string());
    fs::rename(tmp, final_dir);
    fsync_dir(root.string());
    test_fault_point("renamed", state.step);  // tests only
    write_file_atomic((root / "latest").string(), name + "\n");
    prune_checkpoints(root.string(), keep_last);  // the highest keep_last steps by number (run_dir.h)
    log0("checkpoint: saved ", final_dir.string());
  }
  world.barrier();
}

CheckpointCheck verify_checkpoint(const std::string& dir) {
  CheckpointCheck check;
  auto bad = [&](const std::string& file, const std::string& what) {
    if (check.problem.empty()) check.problem = (fs::path(dir) / file).string() + ": " + what;
  };
  const std::string state_path = (fs::path(dir) / "state.json").string();
  json state;
  try {
    state = parse_state_json(dir);
  } catch (const UserError& e) {
    std::string what = e.what();
    if (what.rfind(state_path + ": ", 0) == 0) what = what.substr(state_path.size() + 2);
    check.files.push_back({"state.json", 0, what});
    bad("state.json", what);
    return check;
  }
  check.files.push_back({"state.json", static_cast<int64_t>(fs::file_size(state_path)), ""});
  const int world = state.value("world_size", 0);
  for (int r = 0; r < world; ++r)
    if (!state["files"].contains(shard_file_name(r, world)))
      bad("state.json", "lists no " + shard_file_name(r, world) + " (world " + std::to_string(world) + ")");
  for (const auto& [file, info] : state["files"].items()) {
    CheckpointCheck::File f{file, 0, ""};
    const std::string path = (fs::path(dir) / file).string();
    int64_t bytes = 0;
    const std::string hash = file_xxh3(path, bytes);
    f.bytes = std::max<int64_t>(bytes, 0);
    const int64_t want = info.value("bytes", int64_t(-1));
    if (bytes < 0)
      f.problem = "missing or unreadable";
    else if (bytes != want)
      f.problem = str(bytes, " bytes, state.json records ", want, " (truncated or replaced)");
    else if (hash != info.value("xxh3_64", std::string()))
      f.problem = "checksum " + hash + " differs from the recorded " + info.value("xxh3_64", std::string()) +
                  " (corrupt)";
    else if (file.rfind("shard-", 0) == 0)
      f.problem = non_finite_problem(path);  // finite values only (issue 10, state_check.h)
    if (!f.problem.empty()) bad(file, f.problem);
    check.files.push_back(f);
  }
  if (!check.ok()) return check;
  // Headers and coverage: every recorded tensor's master (or weight) and moments exactly once.
  try {
    const std::vector<StoredSlice> stored = index_slices(dir, state);
    std::map<std::string, std::vector<const Box*>> boxes;
    for (const StoredSlice& s : stored) boxes[s.slice.name].push_back(&s.slice.box);
    std::set<std::string> trained;
    if (state.contains("trained"))
      for (const auto& t : state["trained"]) trained.insert(t.get<std::string>());
    for (const auto& [name, shape_js] : state["tensors"].items()) {
      const auto shape = shape_js.get<std::vector<int64_t>>();
      int64_t numel = 1;
      for (int64_t d : shape) numel *= d;
      std::vector<std::string> kinds = {"weight/"};
      if (trained.count(name)) kinds = {"master/", "exp_avg/", "exp_avg_sq/"};
      for (const std::string& kind : kinds) {
        const auto& list = boxes[kind + name];
        int64_t covered = 0;
        for (size_t i = 0; i < list.size(); ++i) {
          covered += list[i]->numel();
          for (size_t j = i + 1; j < list.size(); ++j)
            if (intersect(*list[i], *list[j])) {
              bad("state.json", "slices of '" + kind + name + "' overlap");
              return check;
            }
        }
        if (covered != numel) {
          bad("state.json", str("the shards cover ", covered, " of ", numel, " elements of '", kind, name, "'"));
          return check;
        }
      }
    }
  } catch (const UserError& e) {
    if (check.problem.empty()) check.problem = e.what();
  }
  return check;
}

std::string find_resume_checkpoint(const std::string& run_dir) {
  const fs::path root = checkpoint_root(run_dir);
  // Newest first: `latest` is written after the rename, so a newer complete directory than the
  // one it names means a crash in between, and that one is complete.
  const std::vector<fs::path> candidates = step_dirs(root);
  if (candidates.empty()) return "";
  const fs::path latest = root / "latest";
  std::string named;
  if (fs::exists(latest)) {
    named = read_file(latest.string());
    while (!named.empty() && (named.back() == '\n' || named.back() == ' ')) named.pop_back();
  }
  for (const fs::path& c : candidates) {
    const CheckpointCheck check = verify_checkpoint(c.string());
    if (!check.ok()) {
      log0("warning: checkpoint ", c.string(), " skipped: ", check.problem);
      continue;
    }
    if (c.filename().string() != named)
      log0("warning: ", latest.string(), named.empty() ? " is missing" : " names '" + named + "'",
           "; resuming from the newest complete checkpoint, ", c.string());
    return c.string();
  }
  user_error("no usable checkpoint in ", root.string(), " (", candidates.size(),
             " found, each incomplete or corrupt: see the warnings above); `kiln verify DIR` shows each "
             "file; move them away, or use a new train.run_dir");
}

std::string latest_checkpoint(const std::string& run_dir) { return find_resume_checkpoint(run_dir); }

std::vector<std::pair<std::string, at::Tensor>> read_checkpoint_weights(const std::string& dir) {
  auto source = checkpoint_weights_source(dir);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, shape] : checkpoint_tensors(dir)) out.emplace_back(name, source->read_full(name, shape));
  return out;
}

std::string resolve_checkpoint(const std::string& path) {
  if (fs::exists(fs::path(path) / "checkpoints") ||
      (fs::exists(fs::path(path) / "config.yaml") && !fs::exists(fs::path(path) / "state.json"))) {
    const std::string found = find_resume_checkpoint(path);
    if (found.empty()) user_error(path, ": has no checkpoint yet");
    return found;
  }
  if (!fs::exists(path)) user_error(path, ": no such checkpoint or run directory");
  const CheckpointCheck check = verify_checkpoint(path);
  if (!check.ok()) user_error(check.problem);
  return path;
}

CheckpointState read_checkpoint_state(const std::string& dir) {
  const json js = parse_state_json(dir);
  CheckpointState st;
  st.step = js["step"].get<int64_t>();
  st.data = js.value("data", json());
  st.extra = js.value("extra", json());
  st.layout = js.value("layout", json());
  return st;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_tensors(const std::string& dir) {
  const json js = parse_state_json(dir);
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (const auto& [n, shape] : js["tensors"].items()) out.emplace_back(n, shape.get<std::vector<int64_t>>());
  return out;
}

std::vector<std::string> checkpoint_trained(const std::string& dir) {
  const json js = parse_state_json(dir);
  std::vector<std::string> out;
  if (js.contains("trained"))
    for (const auto& t : js["trained"]) out.push_back(t.get<std::string>());
  return out;
}

std::unique_ptr<WeightSource> checkpoint_state_source(const std::string& dir) {
  return std::make_unique<CheckpointSource>(dir, /*weights=*/false);
}

std::unique_ptr<WeightSource> checkpoint_weights_source(const std::string& dir) {
  return std::make_unique<CheckpointSource>(dir, /*weights=*/true);
}

std::vector<TensorSlice> read_checkpoint_slices(const std::string& dir) {
  const json state = parse_state_json(dir);
  std::vector<TensorSlice> out;
  for (StoredSlice& s : index_slices(dir, state)) {
    s.slice.data = s.file->tensor(s.key);
    out.push_back(std::move(s.slice));
  }
  return out;
}

std::vector<std::string> checkpoint_rng_states(const std::string& dir) {
  const json js = parse_state_json(dir);
  std::vector<std::string> out;
  if (js.contains("rng") && js["rng"].contains("cpu"))
    for (const auto& s : js["rng"]["cpu"]) out.push_back(s.get<std::string>());
  return out;
}

}  // namespace kiln
