// launch_info(): how this process was started. Under mpirun (OpenMPI, MPICH/PMI or PMIx
// environment) MPI is initialised once by a static guard that finalises it at exit; without
// mpirun kiln is rank 0 of 1 and MPI is never touched.
#include <mpi.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <vector>

#include "parallel/communicator.h"
#include "trainer/error.h"
#include "trainer/log.h"

namespace kiln {
namespace {

bool started_by_mpirun() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (std::getenv(var) != nullptr) return true;
  return false;
}

int env_int(const char* var, int fallback) {
  const char* v = std::getenv(var);
  return v != nullptr ? std::atoi(v) : fallback;
}

std::string host_name() {
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
    int already = 0;
    MPI_Initialized(&already);
    if (!started_by_mpirun() && !already) return;
    if (!already) {
      // FUNNELED: only the main thread calls MPI (the NCCL watchdog thread never does).
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      owns_ = true;
    }
    info.under_mpi = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &info.world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &info.world_size);
    info.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", -1);
    info.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", -1);
    if (info.local_rank < 0 || info.local_size < 0) {
      // Not OpenMPI: ranks sharing memory are the ranks on this host.
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
  return out + (li.under_mpi ? " (mpirun)" : " (no mpirun)");
}

}  // namespace kiln
