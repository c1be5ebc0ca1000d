// Safetensors reader (mmap + validation) and atomic writer. See safetensors.h for the format.
#include "models/safetensors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/file_io.h"

namespace kiln {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

namespace {

using nlohmann::json;

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  int64_t itemsize;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

std::string valid_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) s += std::string(s.empty() ? "" : ", ") + d.name;
  return s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A JSON number that is a whole number in [0, 2^63).
bool as_nonneg_int(const json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    return *out >= 0;
  }
  return false;
}

}  // namespace

at::ScalarType safetensors_dtype(const std::string& name) {
  const DtypeInfo* d = find_dtype(name);
  if (!d) user_error("unknown safetensors dtype '", name, "' (valid: ", valid_dtypes(), ")");
  return d->type;
}

int64_t safetensors_itemsize(const std::string& name) {
  const DtypeInfo* d = find_dtype(name);
  if (!d) user_error("unknown safetensors dtype '", name, "' (valid: ", valid_dtypes(), ")");
  return d->itemsize;
}

std::string safetensors_dtype_name(at::ScalarType type) {
  for (const auto& d : kDtypes)
    if (d.type == type) return d.name;
  KILN_CHECK(false, "no safetensors dtype for ", c10::toString(type), " (valid: ", valid_dtypes(), ")");
  return "";
}

// ---------------------------------------------------------------------------------------------
// MappedFile

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_shared<MappedFile>(path)) {
  const int64_t size = file_->size();
  if (size < 8)
    user_error(path, ": file is ", size, " bytes, too short for the 8-byte header length (truncated?)");
  uint64_t n = 0;
  std::memcpy(&n, file_->data(), 8);
  if (n > static_cast<uint64_t>(size - 8))
    user_error(path, ": header length ", n, " is larger than the file (", size, " bytes; at most ", size - 8,
               ")");
  data_start_ = 8 + static_cast<int64_t>(n);
  const int64_t data_size = size - data_start_;

  json header;
  try {
    const char* h = reinterpret_cast<const char*>(file_->data() + 8);
    header = json::parse(h, h + n);
  } catch (const json::exception& e) {
    user_error(path, ": header is not valid JSON: ", e.what());
  }
  if (!header.is_object()) user_error(path, ": header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) user_error(path, ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) user_error(path, ": __metadata__ '", m.key(), "' must be a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const auto&... what) { user_error(path, ": tensor '", name, "': ", what...); };
    if (!v.is_object()) bad("entry must be an object with dtype, shape, data_offsets");
    if (!v.contains("dtype") || !v["dtype"].is_string()) bad("missing dtype (a string)");
    if (!v.contains("shape") || !v["shape"].is_array()) bad("missing shape (an array)");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      bad("data_offsets must be [begin, end]");

    SafetensorsEntry e;
    e.dtype = v["dtype"].get<std::string>();
    const DtypeInfo* dt = find_dtype(e.dtype);
    if (!dt) bad("unknown dtype '", e.dtype, "' (valid: ", valid_dtypes(), ")");

    // numel * itemsize, refusing overflow (anything past the data size is wrong anyway).
    int64_t bytes = dt->itemsize;
    bool overflow = false;
    for (const json& d : v["shape"]) {
      int64_t dim = 0;
      if (!as_nonneg_int(d, &dim)) bad("shape ", v["shape"].dump(), " must hold non-negative integers");
      e.shape.push_back(dim);
      if (dim != 0 && bytes > std::numeric_limits<int64_t>::max() / dim)
        overflow = true;
      else
        bytes *= dim;
    }
    if (!as_nonneg_int(v["data_offsets"][0], &e.begin) || !as_nonneg_int(v["data_offsets"][1], &e.end))
      bad("data_offsets ", v["data_offsets"].dump(), " must be non-negative integers");
    if (e.begin > e.end) bad("data_offsets [", e.begin, ", ", e.end, "] have begin > end");
    if (e.end > data_size)
      bad("data_offsets [", e.begin, ", ", e.end, "] run past the end of the data section (", data_size,
          " bytes; file truncated?)");
    if (overflow || e.end - e.begin != bytes)
      bad("data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin, " bytes but ", e.dtype, " ",
          shape_str(e.shape), " needs ", overflow ? std::string("more than 2^63") : std::to_string(bytes));
    entries_.emplace(name, std::move(e));
  }

  // No two tensors may share bytes: sort the non-empty ranges and compare neighbours.
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> sorted;
  for (const auto& kv : entries_)
    if (kv.second.end > kv.second.begin) sorted.emplace_back(&kv.first, &kv.second);
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    return a.second->begin != b.second->begin ? a.second->begin < b.second->begin : *a.first < *b.first;
  });
  for (size_t i = 1; i < sorted.size(); ++i) {
    const auto& prev = *sorted[i - 1].second;
    const auto& cur = *sorted[i].second;
    if (cur.begin < prev.end)
      user_error(path, ": tensor '", *sorted[i].first, "': data_offsets [", cur.begin, ", ", cur.end,
                 "] overlap tensor '", *sorted[i - 1].first, "' [", prev.begin, ", ", prev.end, "]");
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  std::sort(out.begin(), out.end(), [this](const std::string& a, const std::string& b) {
    const auto& ea = entries_.at(a);
    const auto& eb = entries_.at(b);
    return ea.begin != eb.begin ? ea.begin < eb.begin : a < b;
  });
  return out;
}

const SafetensorsEntry& SafetensorsFile::info(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) user_error(path(), ": tensor '", name, "' not found");
  return it->second;
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = info(name);
  const DtypeInfo* dt = find_dtype(e.dtype);
  auto opts = at::TensorOptions().dtype(dt->type).device(at::kCPU);
  uint8_t* ptr = const_cast<uint8_t*>(file_->data()) + data_start_ + e.begin;
  const int64_t bytes = e.end - e.begin;
  if (bytes == 0) return at::empty(e.shape, opts);
  if (reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(dt->itemsize) != 0) {
    at::Tensor out = at::empty(e.shape, opts);
    std::memcpy(out.data_ptr(), ptr, static_cast<size_t>(bytes));
    return out;
  }
  std::shared_ptr<MappedFile> keep = file_;
  return at::from_blob(
      ptr, e.shape, [keep](void*) mutable { keep.reset(); }, opts);
}

// ---------------------------------------------------------------------------------------------
// Writer

void write_safetensors_streamed(const std::string& path, const std::vector<TensorHeader>& tensors,
                                const std::function<at::Tensor(size_t)>& fetch,
                                const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  int64_t offset = 0;
  for (const TensorHeader& t : tensors) {
    KILN_CHECK(t.name != "__metadata__" && !header.contains(t.name),
               "write_safetensors: duplicate or reserved tensor name '", t.name, "'");
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(t.dtype));
    header[t.name] = {{"dtype", safetensors_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();

  atomic_write(path, [&](int fd, const std::string& tmp) {
    write_all(fd, &n, 8, tmp);
    write_all(fd, text.data(), text.size(), tmp);
    for (size_t i = 0; i < tensors.size(); ++i) {
      at::Tensor c = fetch(i).detach().to(at::kCPU).contiguous();
      KILN_CHECK(c.scalar_type() == tensors[i].dtype && c.sizes().vec() == tensors[i].shape,
                 "write_safetensors: tensor '", tensors[i].name, "' is not what its header says");
      if (c.nbytes() > 0) write_all(fd, c.data_ptr(), c.nbytes(), tmp);
    }
  });
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<TensorHeader> headers;
  headers.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    KILN_CHECK(t.defined(), "write_safetensors: tensor '", name, "' is undefined");
    headers.push_back({name, t.scalar_type(), t.sizes().vec()});
  }
  write_safetensors_streamed(path, headers, [&](size_t i) { return tensors[i].second; }, metadata);
}

}  // namespace kiln
