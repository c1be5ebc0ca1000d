// Rank-aware logging and the always-on check failure handler.
#include "base/log.h"

#include <cstdio>
#include <mutex>

namespace kiln {
namespace {
int g_rank = 0;
std::string g_host;
std::mutex g_mutex;
}  // namespace

void set_log_rank(int rank, const std::string& host) {
  g_rank = rank;
  g_host = host;
}
int log_rank() { return g_rank; }

std::string rank_prefix() {
  if (g_rank == 0) return "";
  return str("[rank ", g_rank, g_host.empty() ? "" : " ", g_host, "] ");
}

void log_line0(const std::string& line) {
  if (g_rank != 0) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

void log_liner(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "%s%s\n", rank_prefix().c_str(), line.c_str());
  std::fflush(stderr);
}

void fail_check(const char* expr, const char* file, int line, const std::string& msg) {
  throw InternalError(str("check failed: ", expr, " at ", file, ":", line, " (rank ", g_rank, ")",
                          msg.empty() ? "" : ": ", msg));
}

}  // namespace kiln
