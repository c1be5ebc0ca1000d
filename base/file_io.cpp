// MappedFile and atomic writes (see file_io.h).
#include "base/file_io.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"

namespace kiln {
namespace {
std::string errno_str() { return std::strerror(errno); }
}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) user_error(path, ": cannot open: ", errno_str());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    user_error(path, ": not a regular file");
  }
  size_ = static_cast<int64_t>(st.st_size);
  if (size_ > 0) {
    // Private + writable: tensors viewing the mapping may be written in place (copy-on-write
    // pages), and the file itself is never modified.
    void* p = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      std::string err = errno_str();
      ::close(fd);
      user_error(path, ": cannot mmap ", size_, " bytes: ", err);
    }
    data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);
}

void MappedFile::drop_pages() const {
  if (data_) ::madvise(data_, static_cast<size_t>(size_), MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, static_cast<size_t>(size_));
}

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) user_error(dir, ": cannot open directory to sync: ", errno_str());
  ::fsync(fd);
  ::close(fd);
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) user_error(path, ": cannot write: ", errno_str());
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void atomic_write(const std::string& path, const std::function<void(int, const std::string&)>& body) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) user_error(tmp, ": cannot create: ", errno_str());
  try {
    body(fd, tmp);
    if (::fsync(fd) != 0) user_error(tmp, ": fsync failed: ", errno_str());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    user_error(tmp, ": close failed: ", errno_str());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = errno_str();
    ::unlink(tmp.c_str());
    user_error(path, ": cannot rename ", tmp, " into place: ", err);
  }
  fsync_dir(parent_dir(path));
}

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  auto remove_one = [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); };
  if (::nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
    user_error(path, ": cannot remove: ", errno_str());
}

bool dir_is_empty(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (!d) return true;
  bool empty = true;
  while (const dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      empty = false;
      break;
    }
  }
  ::closedir(d);
  return empty;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  atomic_write(path, [&](int fd, const std::string& tmp) { write_all(fd, bytes.data(), bytes.size(), tmp); });
}

}  // namespace kiln
