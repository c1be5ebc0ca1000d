// Run directory lock, resume point, pruning and start-up environment checks (see run_dir.h).
#include "trainer/run_dir.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "parallel/communicator.h"
#include "trainer/checkpoint.h"
#include "base/error.h"
#include "base/file_io.h"
#include "base/log.h"
#include "trainer/resume_policy.h"

namespace fs = std::filesystem;

namespace kiln {
namespace {

std::string errno_str() { return std::strerror(errno); }

std::string read_small_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// What kind of thing is at `path`: 0 nothing, 1 a directory, 2 something else.
int path_kind(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return S_ISDIR(st.st_mode) ? 1 : 2;
}

// realpath(3), not std::filesystem (see remove_tree in file_io.h); the path itself when missing.
std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : p;
}

std::string human_mib(int64_t bytes) { return str(bytes / (1 << 20), " MiB"); }

}  // namespace

std::string RunDirLock::lock_path(const std::string& run_dir) {
  return (fs::path(run_dir) / "kiln.lock").string();
}

RunDirLock::RunDirLock(const std::string& run_dir) {
  const std::string path = lock_path(run_dir);
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) user_error("train.run_dir: cannot create ", path, ": ", errno_str());
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK) user_error("train.run_dir: cannot lock ", path, ": ", std::strerror(err));
    const std::string holder = read_small_file(path);
    user_error("train.run_dir: ", run_dir, " is in use by another kiln train (",
               holder.empty() ? "holder unknown" : holder, ", lock ", path,
               "); wait for it to finish, stop it, or set another train.run_dir");
  }
  // The holder's line, for the next trainer's message. Written in place: the lock is on the inode.
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "?");
  const char* fake = std::getenv("KILN_HOST_NAME");  // see parallel/launch.cpp
  const std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  const std::string line =
      str("pid ", ::getpid(), " on host ", fake && *fake ? fake : host, " since ", when, "\n");
  if (::ftruncate(fd_, 0) != 0 ||
      ::pwrite(fd_, line.data(), line.size(), 0) != static_cast<ssize_t>(line.size()))
    user_error("train.run_dir: cannot write ", path, ": ", errno_str());
  ::fsync(fd_);
}

RunDirLock::~RunDirLock() {
  if (fd_ < 0) return;
  // The holder line goes, so a stale file never names a finished run; the lock goes with close.
  [[maybe_unused]] const int rc = ::ftruncate(fd_, 0);
  ::close(fd_);
}

int64_t checkpoint_step_of(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() == 5 || name.size() > 5 + 18) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

bool is_complete_checkpoint(const std::string& dir) {
  return path_kind((fs::path(dir) / "state.json").string()) == 2;
}

std::vector<std::pair<int64_t, std::string>> complete_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  const std::string root = checkpoint_root(run_dir);
  if (path_kind(root) != 1) return out;
  for (const auto& e : fs::directory_iterator(root)) {
    const int64_t step = checkpoint_step_of(e.path().filename().string());
    if (step >= 0 && e.is_directory() && is_complete_checkpoint(e.path().string()))
      out.emplace_back(step, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string resolve_resume(const TrainConfig& train) {
  const auto done = complete_checkpoints(train.run_dir);
  const std::string root = checkpoint_root(train.run_dir);
  if (train.resume == "never") {
    if (!done.empty())
      user_error("train.resume: never, but ", root, " already holds ", done.size(), " checkpoint(s) up to ",
                 fs::path(done.back().second).filename().string(),
                 " that this run would overwrite and prune; set another train.run_dir for a fresh run, "
                 "or train.resume: auto to continue, or move those checkpoints away");
    return "";
  }
  if (train.resume != "auto") {
    const std::string dir = train.resume;
    if (!is_complete_checkpoint(dir))
      user_error("train.resume: ", dir,
                 " is not a complete checkpoint directory (no state.json); valid: auto | never | DIR");
    resolve_checkpoint(dir);  // verified: sizes, checksums, coverage
    const int64_t step = read_checkpoint_state(dir).step;
    if (!done.empty() && done.back().first > step && real_path(done.back().second) != real_path(dir))
      user_error(
          "train.resume: ", dir, " is step ", step, " but ", root, " already holds newer checkpoints (up to ",
          fs::path(done.back().second).filename().string(),
          ") that this run would mix with; set another train.run_dir, or move the newer checkpoints away");
    return dir;
  }
  return auto_resume_checkpoint(train.run_dir);
}

std::string auto_resume_checkpoint(const std::string& run_dir) {
  // `latest`, else the newest step-* that verifies (checkpoint.h): never random init over
  // checkpoints, and a damaged one is skipped with a warning naming the file.
  return find_resume_checkpoint(run_dir);
}

void prune_checkpoints(const std::string& root, int64_t keep_last) {
  std::vector<std::pair<int64_t, std::string>> done;
  for (const auto& e : fs::directory_iterator(root)) {
    const int64_t step = checkpoint_step_of(e.path().filename().string());
    if (step >= 0 && e.is_directory()) done.emplace_back(step, e.path().string());
  }
  std::sort(done.begin(), done.end());
  for (size_t i = 0; i + static_cast<size_t>(std::max<int64_t>(keep_last, 1)) < done.size(); ++i)
    remove_tree(done[i].second);
}

void check_run_dir_environment(const std::string& run_dir, int64_t need_bytes) {
  const std::string root = checkpoint_root(run_dir);
  for (const std::string& p : {run_dir, root}) {
    if (path_kind(p) == 2)
      user_error("train.run_dir: ", p, " is a file, not a directory; remove it or set another train.run_dir");
    std::error_code ec;
    fs::create_directories(p, ec);
    if (ec)
      user_error("train.run_dir: cannot create ", p, ": ", ec.message(), "; set a writable train.run_dir");
  }
  const std::string probe = (fs::path(root) / ".kiln-write-test").string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    user_error("train.run_dir: ", root, " is not writable (", errno_str(), "); set a writable train.run_dir");
  ::close(fd);
  ::unlink(probe.c_str());
  struct statvfs vfs {};
  if (::statvfs(root.c_str(), &vfs) == 0) {
    const int64_t free_bytes = static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize);
    if (free_bytes < need_bytes)
      user_error("train.run_dir: ", root, " has ", human_mib(free_bytes),
                 " free, one checkpoint needs about ", human_mib(need_bytes),
                 "; free space or set train.run_dir on a larger file system");
  }
}

int64_t checkpoint_bytes(const Config& cfg) {
  // master, exp_avg, exp_avg_sq (fp32 each; the shards of all ranks together) + headers.
  return cfg.model.num_parameters() * 12 + (1 << 20);
}

std::pair<bool, std::string> share_verdict(Communicator& world, const c10::Device& device, bool ok,
                                           const std::string& text) {
  if (world.size() == 1) return {ok, text};
  constexpr int64_t kMax = 4096;
  // A sum over ranks where only rank 0 contributes: a broadcast through the one host-tensor
  // collective every backend has.
  at::Tensor buf = at::zeros({kMax + 1}, at::kInt);
  if (world.rank() == 0) {
    auto* p = buf.data_ptr<int32_t>();
    p[0] = ok ? 1 : 2;
    for (int64_t i = 0; i < kMax - 1 && i < static_cast<int64_t>(text.size()); ++i)
      p[i + 1] = static_cast<unsigned char>(text[i]);
  }
  all_reduce_host(world, buf, device);
  const auto* p = buf.data_ptr<int32_t>();
  std::string out;
  for (int64_t i = 1; i <= kMax && p[i] != 0; ++i) out.push_back(static_cast<char>(p[i]));
  return {p[0] == 1, out};
}

RunDir open_run_dir(const Config& cfg, Communicator& world, const c10::Device& device) {
  RunDir rd;
  bool ok = true;
  std::string text;
  if (world.rank() == 0) {
    try {
      check_run_dir_environment(cfg.train.run_dir, checkpoint_bytes(cfg));
      rd.lock = std::make_unique<RunDirLock>(cfg.train.run_dir);
      text = resolve_resume(cfg.train);
      if (!text.empty()) check_resume_compatibility(text, cfg, world.size());
    } catch (const UserError& e) {
      ok = false;
      text = e.what();
    }
  }
  auto [all_ok, shared] = share_verdict(world, device, ok, text);
  if (!all_ok) {
    rd.lock.reset();
    if (world.rank() == 0) user_error(shared);
    user_error("world rank 0 refused to start: ", shared);
  }
  rd.resume_dir = shared;
  return rd;
}

}  // namespace kiln
