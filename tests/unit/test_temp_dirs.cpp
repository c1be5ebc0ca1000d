// The tests' temporary directories: made under $TMPDIR (else /tmp) and removed with the object,
// whatever they hold (scripts/test.sh also fails when anything of kiln's is left in its TMPDIR).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "test_data_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

TEST(TestTempDirs, HonourTmpdirAndAreRemoved) {
  const char* before = std::getenv("TMPDIR");
  const std::optional<std::string> saved = before ? std::optional<std::string>(before) : std::nullopt;
  test::TempDir outer;
  ::setenv("TMPDIR", outer.str().c_str(), 1);
  EXPECT_EQ(test::temp_root(), outer.str());
  std::string path;
  {
    test::TempDir inner;
    path = inner.str();
    EXPECT_EQ(fs::path(path).parent_path(), fs::path(outer.str()));
    fs::create_directories(inner / "a/b");
    test::write_text(inner / "a/b/file", "x");
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(outer.str()));
  if (saved)
    ::setenv("TMPDIR", saved->c_str(), 1);
  else
    ::unsetenv("TMPDIR");
}

}  // namespace
}  // namespace kiln
