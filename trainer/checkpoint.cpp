// Sharded, atomic checkpoints (see checkpoint.h).
#include "trainer/checkpoint.h"

#include <ATen/ATen.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "models/safetensors.h"
#include "parallel/communicator.h"
#include "trainer/error.h"
#include "trainer/file_io.h"
#include "trainer/log.h"
#include "trainer/run_dir.h"

namespace fs = std::filesystem;

namespace kiln {
namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) user_error(path, ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string checkpoint_root(const std::string& run_dir) {
  return (fs::path(run_dir) / "checkpoints").string();
}

std::string latest_checkpoint(const std::string& run_dir) {
  const fs::path root = checkpoint_root(run_dir);
  const fs::path latest = root / "latest";
  if (!fs::exists(latest)) return "";
  std::string name = read_file(latest.string());
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const fs::path dir = root / name;
  if (name.empty() || !fs::exists(dir / "state.json"))
    user_error(latest.string(), ": names '", name,
               "', which is not a complete checkpoint (no state.json); "
               "point train.resume at a step-* directory or set train.resume: never");
  return dir.string();
}

void save_checkpoint(const std::string& run_dir, Communicator& world, const CheckpointState& state,
                     const std::vector<std::pair<std::string, at::Tensor>>& weights,
                     const std::vector<TensorSlice>& slices, const std::string& config_yaml,
                     int64_t keep_last) {
  const fs::path root = checkpoint_root(run_dir);
  const std::string name = step_name(state.step);
  const fs::path tmp = root / (name + ".tmp");
  const fs::path final_dir = root / name;
  if (world.rank() == 0) {
    fs::create_directories(root);
    remove_tree(tmp.string());  // leftovers of an interrupted save
    fs::create_directories(tmp);
  }
  world.barrier();

  // Every rank: its optimizer slices, with their place in the global tensors in the metadata.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  nlohmann::json index = nlohmann::json::object();
  for (const auto& s : slices) {
    tensors.emplace_back(s.name, s.data.contiguous());
    index[s.name] = {{"shape", s.global_shape}, {"begin", s.flat_begin}, {"end", s.flat_end}};
  }
  char file[64];
  std::snprintf(file, sizeof(file), "optim-%05d.safetensors", world.rank());
  write_safetensors((tmp / file).string(), tensors, {{"slices", index.dump()}});

  world.barrier();
  if (world.rank() == 0) {
    write_safetensors((tmp / "model.safetensors").string(), weights, {{"format", "pt"}});
    write_file_atomic((tmp / "config.yaml").string(), config_yaml);
    nlohmann::json js = {{"step", state.step},
                         {"data", state.data},
                         {"extra", state.extra},
                         {"world_size", world.size()},
                         {"format_version", 1}};
    write_file_atomic((tmp / "state.json").string(), js.dump(2));
    if (fs::exists(final_dir)) remove_tree(final_dir.string());
    fs::rename(tmp, final_dir);
    fsync_dir(root.string());
    write_file_atomic((root / "latest").string(), name + "\n");
    prune_checkpoints(root.string(), keep_last);  // the highest keep_last steps by number (run_dir.h)
    log0("checkpoint: saved ", final_dir.string());
  }
  world.barrier();
}

CheckpointState read_checkpoint_state(const std::string& dir) {
  const std::string path = (fs::path(dir) / "state.json").string();
  nlohmann::json js;
  try {
    js = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    user_error(path, ": corrupt checkpoint state (", e.what(), ")");
  }
  if (!js.contains("step") || !js["step"].is_number_integer())
    user_error(path, ": corrupt checkpoint state (no integer 'step')");
  CheckpointState st;
  st.step = js["step"].get<int64_t>();
  st.data = js.value("data", nlohmann::json());
  st.extra = js.value("extra", nlohmann::json());
  return st;
}

std::vector<TensorSlice> read_checkpoint_slices(const std::string& dir) {
  std::vector<TensorSlice> out;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("optim-", 0) == 0 && e.path().extension() == ".safetensors") files.push_back(e.path());
  }
  if (files.empty()) user_error(dir, ": checkpoint has no optim-*.safetensors files");
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    SafetensorsFile st(f.string());
    auto it = st.metadata().find("slices");
    if (it == st.metadata().end())
      user_error(f.string(), ": no 'slices' metadata; not a kiln optimizer file");
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
      user_error(f.string(), ": corrupt 'slices' metadata (", e.what(), ")");
    }
    for (const auto& name : st.names()) {
      if (!index.contains(name)) user_error(f.string(), ": tensor '", name, "' has no slice metadata");
      const auto& m = index[name];
      TensorSlice s;
      s.name = name;
      s.global_shape = m.at("shape").get<std::vector<int64_t>>();
      s.flat_begin = m.at("begin").get<int64_t>();
      s.flat_end = m.at("end").get<int64_t>();
      s.data = st.tensor(name).reshape(-1).to(at::kFloat);
      if (s.data.numel() != s.flat_end - s.flat_begin)
        user_error(f.string(), ": tensor '", name, "' holds ", s.data.numel(), " elements, its slice says ",
                   s.flat_end - s.flat_begin);
      out.push_back(std::move(s));
    }
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> read_checkpoint_weights(const std::string& dir) {
  SafetensorsFile st((fs::path(dir) / "model.safetensors").string());
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& n : st.names()) out.emplace_back(n, st.tensor(n));
  return out;
}

}  // namespace kiln
