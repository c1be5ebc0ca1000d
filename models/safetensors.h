// Safetensors: kiln's own reader and writer for the format Hugging Face and kiln checkpoints use.
//
// File layout: u64 little-endian N | N bytes of JSON header | data section. The header maps
// each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
// data section) and may hold "__metadata__": {string: string}.
//
// The reader maps the file (mmap, MAP_PRIVATE) and validates everything before any tensor is
// handed out: header length within the file, JSON valid, known dtypes, non-negative shapes,
// offsets inside the data section, sizes matching dtype x shape, no two tensors overlapping.
// Every problem is a UserError of one line: "FILE: tensor 'NAME': <problem>".
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/file_io.h"

namespace kiln {

struct SafetensorsEntry {
  std::string dtype;           // F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL
  std::vector<int64_t> shape;  // [] for a scalar
  int64_t begin = 0, end = 0;  // byte range in the data section
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_->path(); }
  // Tensor names in the order of their data in the file.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  const SafetensorsEntry& info(const std::string& name) const;  // UserError if absent
  // The tensor in its stored dtype on the CPU. It views the mapping without a copy and keeps
  // the mapping alive; the mapping is private (copy-on-write), so writing into the tensor never
  // changes the file. Data not aligned to its element size is copied instead.
  at::Tensor tensor(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // See MappedFile::drop_pages(): for readers that copy out of the mapping and never write it.
  void drop_pages() const { file_->drop_pages(); }

 private:
  std::shared_ptr<MappedFile> file_;
  int64_t data_start_ = 0;  // 8 + header length
  std::unordered_map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes the tensors (moved to the CPU, made contiguous, kept in their dtype) in the given
// order with an 8-byte aligned header padded with spaces. Atomic: PATH.tmp, fsync, rename,
// fsync of the directory, so PATH is either the old file or the complete new one.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The same, one tensor at a time: the header is built from names, dtypes and shapes, then
// fetch(i) is called for each tensor in order and written at once, so only one tensor is in
// memory (kiln export assembling a model from checkpoint shards).
struct TensorHeader {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};
void write_safetensors_streamed(const std::string& path, const std::vector<TensorHeader>& tensors,
                                const std::function<at::Tensor(size_t)>& fetch,
                                const std::map<std::string, std::string>& metadata = {});

// "F32" <-> at::kFloat etc. UserError for a name outside the supported set.
at::ScalarType safetensors_dtype(const std::string& name);
std::string safetensors_dtype_name(at::ScalarType type);  // KILN_CHECK for unsupported types
int64_t safetensors_itemsize(const std::string& name);

}  // namespace kiln
