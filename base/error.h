// Two tiers of errors (STYLE.md 3).
//  - UserError: bad input from a user (file, line, config key). Caught once in main,
//    printed as one line, exit code 2.
//  - KILN_CHECK: a programmer error. Always on (never compiled out), prints the expression,
//    file:line and rank, throws InternalError (exit code 3).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace kiln {

class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// str("a=", 1, ", b=", 2.5) -> "a=1, b=2.5"
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
[[noreturn]] void user_error(const Args&... args) {
  throw UserError(::kiln::str(args...));
}

[[noreturn]] void fail_check(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace kiln

#define KILN_CHECK(cond, ...)                                                             \
  do {                                                                                    \
    if (!(cond)) ::kiln::fail_check(#cond, __FILE__, __LINE__, ::kiln::str(__VA_ARGS__)); \
  } while (0)
