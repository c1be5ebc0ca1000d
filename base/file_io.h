// File primitives every writer and reader of kiln shares: a read-only memory mapping owned by
// RAII, and atomic writes (PATH.tmp, fsync, rename, fsync of the directory) so that a file is
// either the old one or the complete new one, never half written.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace kiln {

// A whole file mapped into memory (MAP_PRIVATE: writes through the mapping never reach the
// file). The descriptor is closed at once; the mapping lives until destruction.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // UserError when it cannot be opened
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops the pages read so far from this process (they are read again from the file on the
  // next access), so that reading a large file piece by piece never makes it resident as a
  // whole. Only for mappings nobody wrote through: written pages would lose their changes.
  void drop_pages() const;

 private:
  std::string path_;
  uint8_t* data_ = nullptr;
  int64_t size_ = 0;
};

// PATH.tmp <- body(fd, tmp_path), fsync, rename to PATH, fsync the directory. The temporary is
// removed on any failure.
void atomic_write(const std::string& path, const std::function<void(int, const std::string&)>& body);
void write_file_atomic(const std::string& path, const std::string& bytes);
// write(2) until done; UserError naming `path` on failure (disk full, ...).
void write_all(int fd, const void* data, size_t n, const std::string& path);
// fsync a directory so a rename inside it survives a crash.
void fsync_dir(const std::string& dir);
std::string parent_dir(const std::string& path);
// Removes a directory tree (or a file); missing is fine. Not std::filesystem::remove_all:
// LibTorch's libraries export their own copies of some libstdc++ filesystem symbols, built
// against another ABI, and the dynamic linker can bind our calls to those (a crash in remove_all).
void remove_tree(const std::string& path);
bool dir_is_empty(const std::string& path);  // true for a missing directory too

}  // namespace kiln
