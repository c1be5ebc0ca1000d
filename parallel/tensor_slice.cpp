// Box geometry over row-major tensors (see tensor_slice.h).
#include "parallel/tensor_slice.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "base/error.h"

namespace kiln {
namespace {

int64_t product(const std::vector<int64_t>& v, size_t from) {
  int64_t p = 1;
  for (size_t i = from; i < v.size(); ++i) p *= v[i];
  return p;
}

// Boxes of [begin, end) inside the sub-tensor of dims [d, ndim), prefixed by `prefix` (the fixed
// offsets of dims [0, d), each of length 1).
void range_boxes(const std::vector<int64_t>& shape, size_t d, int64_t begin, int64_t end, Box prefix,
                 std::vector<Box>& out) {
  if (begin >= end) return;
  if (d == shape.size()) {  // a scalar position
    out.push_back(std::move(prefix));
    return;
  }
  const int64_t inner = product(shape, d + 1);
  auto whole_rows = [&](int64_t r0, int64_t r1) {  // rows [r0, r1) of dim d, complete below
    if (r0 >= r1) return;
    Box b = prefix;
    b.offset.push_back(r0);
    b.length.push_back(r1 - r0);
    for (size_t k = d + 1; k < shape.size(); ++k) {
      b.offset.push_back(0);
      b.length.push_back(shape[k]);
    }
    out.push_back(std::move(b));
  };
  auto within_row = [&](int64_t r, int64_t a, int64_t b) {  // [a, b) inside row r
    Box p = prefix;
    p.offset.push_back(r);
    p.length.push_back(1);
    range_boxes(shape, d + 1, a, b, std::move(p), out);
  };
  int64_t r0 = begin / inner;
  const int64_t r_last = (end - 1) / inner;
  if (r0 == r_last) {
    if (begin % inner == 0 && end - begin == inner)
      whole_rows(r0, r0 + 1);
    else
      within_row(r0, begin - r0 * inner, end - r0 * inner);
    return;
  }
  if (begin % inner != 0) {
    within_row(r0, begin - r0 * inner, inner);
    ++r0;
  }
  const int64_t r_end = end / inner;  // rows [r0, r_end) are whole
  whole_rows(r0, r_end);
  if (end % inner != 0) within_row(r_end, 0, end - r_end * inner);
}

}  // namespace

int64_t Box::numel() const {
  int64_t n = 1;
  for (int64_t l : length) n *= l;
  return n;
}

Box full_box(const std::vector<int64_t>& shape) {
  return Box{std::vector<int64_t>(shape.size(), 0), shape};
}

std::vector<Box> flat_range_boxes(const std::vector<int64_t>& shape, int64_t begin, int64_t end) {
  KILN_CHECK(0 <= begin && begin <= end && end <= product(shape, 0), "flat range [", begin, ", ", end,
             ") outside a tensor of ", product(shape, 0), " elements");
  std::vector<Box> out;
  range_boxes(shape, 0, begin, end, Box{}, out);
  return out;
}

std::optional<Box> intersect(const Box& a, const Box& b) {
  KILN_CHECK(a.offset.size() == b.offset.size(), "boxes of different rank");
  Box r;
  for (size_t d = 0; d < a.offset.size(); ++d) {
    const int64_t lo = std::max(a.offset[d], b.offset[d]);
    const int64_t hi = std::min(a.offset[d] + a.length[d], b.offset[d] + b.length[d]);
    if (lo >= hi) return std::nullopt;
    r.offset.push_back(lo);
    r.length.push_back(hi - lo);
  }
  return r;
}

Box relative_to(const Box& inner, const Box& outer) {
  Box r = inner;
  for (size_t d = 0; d < r.offset.size(); ++d) r.offset[d] -= outer.offset[d];
  return r;
}

at::Tensor box_view(const at::Tensor& t, const Box& b) {
  KILN_CHECK(static_cast<size_t>(t.dim()) == b.offset.size(), "box of rank ", b.offset.size(),
             " on a tensor of rank ", t.dim());
  at::Tensor v = t;
  for (size_t d = 0; d < b.offset.size(); ++d) v = v.narrow(static_cast<int64_t>(d), b.offset[d], b.length[d]);
  return v;
}

bool box_inside(const Box& b, const std::vector<int64_t>& shape) {
  if (b.offset.size() != shape.size() || b.length.size() != shape.size()) return false;
  for (size_t d = 0; d < shape.size(); ++d)
    if (b.offset[d] < 0 || b.length[d] < 1 || b.offset[d] + b.length[d] > shape[d]) return false;
  return true;
}

std::string box_str(const Box& b) {
  std::string s = "[";
  for (size_t d = 0; d < b.offset.size(); ++d)
    s += str(d ? ", " : "", b.offset[d], ":", b.offset[d] + b.length[d]);
  return s + "]";
}

std::vector<TensorSlice> slices_of_range(const std::string& name, const std::vector<int64_t>& shape,
                                         int64_t begin, int64_t end, const at::Tensor& flat) {
  KILN_CHECK(flat.numel() == end - begin, "range of ", end - begin, " elements, buffer of ", flat.numel());
  std::vector<TensorSlice> out;
  int64_t pos = 0;
  for (Box& b : flat_range_boxes(shape, begin, end)) {
    const int64_t n = b.numel();
    at::Tensor data = flat.narrow(0, pos, n).view(b.length);
    out.push_back({name, shape, std::move(b), data});
    pos += n;
  }
  return out;
}

int64_t fill_range_from_slices(const std::vector<const TensorSlice*>& slices, const std::vector<int64_t>& shape,
                               int64_t begin, int64_t end, at::Tensor& out) {
  int64_t covered = 0, pos = 0;
  for (const Box& want : flat_range_boxes(shape, begin, end)) {
    at::Tensor dst = out.narrow(0, pos, want.numel()).view(want.length);
    pos += want.numel();
    for (const TensorSlice* s : slices) {
      std::optional<Box> both = intersect(want, s->box);
      if (!both) continue;
      box_view(dst, relative_to(*both, want)).copy_(box_view(s->data, relative_to(*both, s->box)));
      covered += both->numel();
    }
  }
  return covered;
}

}  // namespace kiln
