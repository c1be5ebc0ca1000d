// Rank-aware logging (STYLE.md 9): log0 prints on rank 0 only, for the human; logr prints on
// every rank with a "[rank N host]" prefix on ranks other than 0. Both go to stderr so stdout
// stays clean for machine-read output (eval's JSON line, generate's text).
#pragma once
#include <string>

#include "base/error.h"

namespace kiln {

void set_log_rank(int rank, const std::string& host);
int log_rank();
std::string rank_prefix();  // "" on rank 0, "[rank 3 node2] " elsewhere

void log_line0(const std::string& line);
void log_liner(const std::string& line);

template <typename... Args>
void log0(const Args&... args) {
  log_line0(::kiln::str(args...));
}
template <typename... Args>
void logr(const Args&... args) {
  log_liner(::kiln::str(args...));
}

}  // namespace kiln
