// launch_info(): how this process was started. Under mpirun (OpenMPI, MPICH/PMI or PMIx
// environment) MPI is initialised once by a static guard that finalises it at exit; without
// mpirun kiln is rank 0 of 1 and MPI is never touched.
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <vector>

#include "parallel/communicator.h"
#include "base/error.h"
#include "base/log.h"

namespace kiln {
namespace {

int env_int(const std::function<const char*(const char*)>& get, const char* var, int fallback) {
  const char* v = get(var);
  return v != nullptr && *v ? std::atoi(v) : fallback;
}

std::string host_name() {
  // KILN_HOST_NAME names this process's host in logs and the run-dir lock: set by the tests'
  // fake remote agent (several "hosts" on one machine), or to a site's preferred node name.
  if (const char* fake = std::getenv("KILN_HOST_NAME"); fake != nullptr && *fake) return fake;
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

// Owns MPI_Init_thread / MPI_Finalize (RAII): constructed on the first launch_info() call,
// destroyed after every later-constructed static, i.e. after communicators owned by main.
class MpiSession {
 public:
  MpiSession() {
    info.host = host_name();
    const LaunchEnv env = launch_env();
    int already = 0;
    MPI_Initialized(&already);
    if (env.launcher.empty() && !already) return;
    if (!already) {
      // FUNNELED: only the main thread calls MPI (the NCCL watchdog thread never does).
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      owns_ = true;
    }
    info.under_mpi = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &info.world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &info.world_size);
    if (env.size > 1 && info.world_size != env.size)
      user_error(
          env.launcher, " started ", env.size, " tasks but MPI sees a world of ", info.world_size,
          ": the tasks did not join one MPI job (under Slurm: srun --mpi=pmix, or pmi2, as the cluster's "
          "MPI was built for)");
    info.local_rank = env.local_rank;
    info.local_size = env.local_size;
    if (info.local_rank < 0 || info.local_size < 0) {
      // Not given by the launcher: ranks sharing memory are the ranks on this host.
      MPI_Comm node;
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info.world_rank, MPI_INFO_NULL, &node);
      MPI_Comm_rank(node, &info.local_rank);
      MPI_Comm_size(node, &info.local_size);
      MPI_Comm_free(&node);
    }
  }
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  LaunchInfo info;

 private:
  bool owns_ = false;
};

}  // namespace

LaunchEnv launch_env(const std::function<const char*(const char*)>& get) {
  LaunchEnv e;
  if (get("OMPI_COMM_WORLD_RANK") != nullptr) {
    e.launcher = "mpirun";
    e.rank = env_int(get, "OMPI_COMM_WORLD_RANK", -1);
    e.size = env_int(get, "OMPI_COMM_WORLD_SIZE", -1);
    e.local_rank = env_int(get, "OMPI_COMM_WORLD_LOCAL_RANK", -1);
    e.local_size = env_int(get, "OMPI_COMM_WORLD_LOCAL_SIZE", -1);
  } else if (get("SLURM_PROCID") != nullptr && get("SLURM_STEP_NUM_TASKS") != nullptr) {
    // A task of an srun job step (the batch script itself has no SLURM_STEP_NUM_TASKS).
    e.launcher = "srun";
    e.rank = env_int(get, "SLURM_PROCID", -1);
    e.size = env_int(get, "SLURM_STEP_NUM_TASKS", env_int(get, "SLURM_NTASKS", -1));
    e.local_rank = env_int(get, "SLURM_LOCALID", -1);
    // SLURM_STEP_TASKS_PER_NODE may be uneven ("2(x3),1"): a local size only when it is one number.
    const char* per_node = get("SLURM_STEP_TASKS_PER_NODE");
    if (per_node != nullptr && std::string(per_node).find_first_not_of("0123456789") == std::string::npos)
      e.local_size = std::atoi(per_node);
  } else if (get("PMIX_RANK") != nullptr || get("PMI_RANK") != nullptr) {
    e.launcher = "pmi";
    e.rank = env_int(get, get("PMIX_RANK") ? "PMIX_RANK" : "PMI_RANK", -1);
    e.size = env_int(get, "PMI_SIZE", -1);
  }
  return e;
}

void abort_job(int code) {
  int initialized = 0, finalized = 0, size = 1;
  MPI_Initialized(&initialized);
  if (!initialized) return;
  MPI_Finalized(&finalized);
  if (finalized) return;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size <= 1) return;
  std::fflush(stderr);
  std::fflush(stdout);
  MPI_Abort(MPI_COMM_WORLD, code);
}

const LaunchInfo& launch_info() {
  static MpiSession session;
  static const bool logged_rank = (set_log_rank(session.info.world_rank, session.info.host), true);
  (void)logged_rank;
  return session.info;
}

std::string launch_layout() {
  const LaunchInfo& li = launch_info();
  std::vector<std::string> hosts{li.host};
  if (li.under_mpi && li.world_size > 1) {
    constexpr int kLen = 64;
    std::vector<char> mine(kLen, 0), all(static_cast<size_t>(kLen) * li.world_size, 0);
    li.host.copy(mine.data(), kLen - 1);
    MPI_Allgather(mine.data(), kLen, MPI_CHAR, all.data(), kLen, MPI_CHAR, MPI_COMM_WORLD);
    hosts.clear();
    for (int r = 0; r < li.world_size; ++r) hosts.emplace_back(&all[static_cast<size_t>(r) * kLen]);
  }
  // Hosts in order of their first rank, each with its rank list ("node1 [0-3]").
  std::vector<std::string> order;
  std::map<std::string, std::vector<int>> ranks;
  for (int r = 0; r < static_cast<int>(hosts.size()); ++r) {
    if (ranks.find(hosts[r]) == ranks.end()) order.push_back(hosts[r]);
    ranks[hosts[r]].push_back(r);
  }
  std::string out = str(li.world_size, li.world_size == 1 ? " process" : " processes", " on ", order.size(),
                        order.size() == 1 ? " host:" : " hosts:");
  for (const std::string& h : order) {
    const std::vector<int>& rs = ranks[h];
    const bool contiguous = rs.back() - rs.front() + 1 == static_cast<int>(rs.size());
    out += str(" ", h, " [");
    if (contiguous && rs.size() > 1) {
      out += str(rs.front(), "-", rs.back());
    } else {
      for (size_t i = 0; i < rs.size(); ++i) out += str(i ? "," : "", rs[i]);
    }
    out += "]";
  }
  const std::string how = launch_env().launcher;
  return out + (li.under_mpi ? str(" (", how.empty() ? "mpi" : how, ")") : " (no mpirun)");
}

}  // namespace kiln
