// The MPI backend. Every collective is non-blocking MPI polled with MPI_Test against a deadline
// (timeout_s): a peer that died or hangs ends the job through MPI_Abort with one line naming the
// collective, the group and the rank, instead of hanging forever.
//
// Tensors travel as raw elements (MPI_UINT8/16/32/64_T by element size), so any dtype can be
// gathered, broadcast, sent and received. Reductions need arithmetic: fp32, fp64, int32, int64,
// uint8 and int8 reduce natively; bf16 and fp16 are widened to fp32, reduced, and rounded once
// (more accurate than a 16-bit custom MPI_Op, at twice the bytes on the wire).
//
// MPI counts are ints: a call over more elements runs in rounds of at most INT_MAX elements
// (strided datatypes for all_gather, per-rank broadcasts for all_gather_v past int offsets).
//
// CUDA tensors are staged through pinned host memory unless the MPI reports CUDA support
// (MPIX_Query_cuda_support), in which case device pointers go to MPI after a stream sync.
#include <ATen/ATen.h>
#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif
#ifdef KILN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "parallel/communicator_backends.h"
#include "base/error.h"

namespace kiln {
namespace {

using Clock = std::chrono::steady_clock;

bool mpi_is_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

// Raw element type by size: moves bytes of any dtype without interpreting them.
MPI_Datatype raw_type(const at::Tensor& t) {
  switch (t.element_size()) {
    case 1:
      return MPI_UINT8_T;
    case 2:
      return MPI_UINT16_T;
    case 4:
      return MPI_UINT32_T;
    case 8:
      return MPI_UINT64_T;
  }
  KILN_CHECK(false, "no MPI element type for dtype ", t.scalar_type());
  return MPI_DATATYPE_NULL;
}

// The dtype a reduction runs in: 16-bit floats widen to fp32.
at::ScalarType reduce_dtype(at::ScalarType s) {
  return (s == at::kBFloat16 || s == at::kHalf) ? at::kFloat : s;
}

MPI_Datatype arith_type(at::ScalarType s, const char* op) {
  switch (s) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kInt:
      return MPI_INT32_T;
    case at::kLong:
      return MPI_INT64_T;
    case at::kByte:
      return MPI_UINT8_T;
    case at::kChar:
      return MPI_INT8_T;
    default:
      break;
  }
  KILN_CHECK(false, op, ": cannot reduce dtype ", s);
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  return MPI_SUM;
}

int64_t max_count_from_env() {
  const char* v = std::getenv("KILN_MPI_MAX_COUNT");
  const int64_t n = v != nullptr ? std::atoll(v) : 0;
  return n > 0 && n < INT_MAX ? n : INT_MAX;
}

// A committed datatype of `count` raw elements whose extent is `extent_bytes` (RAII).
struct MpiType {
  MpiType(MPI_Datatype raw, int count, int64_t extent_bytes) {
    MPI_Datatype block;
    MPI_Type_contiguous(count, raw, &block);
    MPI_Type_create_resized(block, 0, static_cast<MPI_Aint>(extent_bytes), &type);
    MPI_Type_commit(&type);
    MPI_Type_free(&block);
  }
  ~MpiType() { MPI_Type_free(&type); }
  MpiType(const MpiType&) = delete;
  MpiType& operator=(const MpiType&) = delete;
  MPI_Datatype type;
};

bool overlaps(const at::Tensor& a, const at::Tensor& b) {
  const auto* a0 = static_cast<const char*>(a.data_ptr());
  const auto* b0 = static_cast<const char*>(b.data_ptr());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of comm (freed in the destructor).
  MpiCommunicator(MPI_Comm comm, std::string name, double timeout_s)
      : comm_(comm), name_(std::move(name)), timeout_s_(timeout_s), cuda_aware_(mpi_is_cuda_aware()) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce(at::Tensor& t, ReduceOp op) override {
    at::Tensor w = wire(t, reduce_dtype(t.scalar_type()), /*with_values=*/true);
    const MPI_Datatype type = arith_type(w.scalar_type(), "all_reduce");
    char* base = static_cast<char*>(w.data_ptr());
    for_chunks(w.numel(), [&](int64_t off, int count) {
      MPI_Request req;
      check(MPI_Iallreduce(MPI_IN_PLACE, base + off * w.element_size(), count, type, mpi_op(op), comm_, &req),
            "all_reduce");
      wait(req, "all_reduce");
    });
    if (!w.is_same(t)) t.copy_(w);
  }

  void all_gather(const at::Tensor& shard, at::Tensor& out) override {
    check_all_gather_args(*this, shard, out);
    at::Tensor o = wire(out, out.scalar_type(), /*with_values=*/false);
    at::Tensor s = wire(shard, shard.scalar_type(), /*with_values=*/true);
    if (overlaps(s, o)) s = s.clone();  // MPI forbids aliased send and receive buffers
    const int64_t n = s.numel(), el = s.element_size();
    const MPI_Datatype raw = raw_type(s);
    char* src = static_cast<char*>(s.data_ptr());
    char* dst = static_cast<char*>(o.data_ptr());
    // Rank q's chunk [off, off + count) lands at q * n + off: one block of `count` elements
    // whose extent is a whole shard, so each round is one call whatever n is.
    if (n <= max_count_) {
      MPI_Request req;
      check(MPI_Iallgather(src, static_cast<int>(n), raw, dst, static_cast<int>(n), raw, comm_, &req),
            "all_gather");
      wait(req, "all_gather");
    } else {
      for_chunks(n, [&](int64_t off, int count) {
        MpiType block(raw, count, n * el);
        MPI_Request req;
        check(MPI_Iallgather(src + off * el, count, raw, dst + off * el, 1, block.type, comm_, &req),
              "all_gather");
        wait(req, "all_gather");
      });
    }
    if (!o.is_same(out)) out.copy_(o);
  }

  void all_gather_v(const at::Tensor& shard, at::Tensor& out, const std::vector<int64_t>& counts) override {
    check_all_gather_v_args(*this, shard, out, counts);
    at::Tensor o = wire(out, out.scalar_type(), /*with_values=*/false);
    at::Tensor s = wire(shard, shard.scalar_type(), /*with_values=*/true);
    if (overlaps(s, o)) s = s.clone();
    const int64_t total = o.numel(), el = o.element_size();
    char* dst = static_cast<char*>(o.data_ptr());
    if (total <= max_count_) {
      std::vector<int> cnt(size_), displ(size_);
      int64_t offset = 0;
      for (int r = 0; r < size_; ++r) {
        cnt[r] = static_cast<int>(counts[r]);
        displ[r] = static_cast<int>(offset);
        offset += counts[r];
      }
      MPI_Request req;
      check(MPI_Iallgatherv(s.data_ptr(), cnt[rank_], raw_type(s), dst, cnt.data(), displ.data(), raw_type(o),
                            comm_, &req),
            "all_gather_v");
      wait(req, "all_gather_v");
    } else {
      // Offsets beyond MPI's int: every rank broadcasts its slice, chunk by chunk.
      int64_t offset = 0;
      for (int r = 0; r < size_; ++r) {
        char* slice = dst + offset * el;
        if (r == rank_) std::memcpy(slice, s.data_ptr(), s.nbytes());
        for_chunks(counts[r], [&](int64_t off, int count) {
          MPI_Request req;
          check(MPI_Ibcast(slice + off * el, count, raw_type(o), r, comm_, &req), "all_gather_v");
          wait(req, "all_gather_v");
        });
        offset += counts[r];
      }
    }
    if (!o.is_same(out)) out.copy_(o);
  }

  void reduce_scatter(const at::Tensor& in, at::Tensor& out, ReduceOp op) override {
    check_reduce_scatter_args(*this, in, out);
    const at::ScalarType rt = reduce_dtype(in.scalar_type());
    const MPI_Datatype type = arith_type(rt, "reduce_scatter");
    at::Tensor o = wire(out, rt, /*with_values=*/false);
    at::Tensor i = wire(in, rt, /*with_values=*/true);
    if (overlaps(i, o)) i = i.clone();
    const int64_t m = o.numel();  // elements each rank receives
    at::Tensor by_rank = i.view({size_, m});
    for_chunks(m, [&](int64_t off, int count) {
      // Round input: columns [off, off + count) of every rank's block, laid end to end.
      at::Tensor round = m <= max_count_ ? i : by_rank.narrow(1, off, count).contiguous();
      MPI_Request req;
      check(MPI_Ireduce_scatter_block(round.data_ptr(),
                                      static_cast<char*>(o.data_ptr()) + off * o.element_size(), count, type,
                                      mpi_op(op), comm_, &req),
            "reduce_scatter");
      wait(req, "reduce_scatter");
    });
    if (!o.is_same(out)) out.copy_(o);
  }

  void broadcast(at::Tensor& t, int root) override {
    KILN_CHECK(root >= 0 && root < size_, "broadcast on group ", name_, ": root ", root,
               " is not a rank of 0..", size_ - 1);
    at::Tensor w = wire(t, t.scalar_type(), /*with_values=*/rank_ == root);
    char* base = static_cast<char*>(w.data_ptr());
    for_chunks(w.numel(), [&](int64_t off, int count) {
      MPI_Request req;
      check(MPI_Ibcast(base + off * w.element_size(), count, raw_type(w), root, comm_, &req), "broadcast");
      wait(req, "broadcast");
    });
    if (!w.is_same(t)) t.copy_(w);
  }

  void send(const at::Tensor& t, int dst) override {
    check_peer(*this, dst, "send");
    at::Tensor w = wire(t, t.scalar_type(), /*with_values=*/true);
    char* base = static_cast<char*>(w.data_ptr());
    for_chunks(w.numel(), [&](int64_t off, int count) {
      MPI_Request req;
      check(MPI_Isend(base + off * w.element_size(), count, raw_type(w), dst, kTag, comm_, &req), "send");
      wait(req, "send");
    });
  }

  void recv(at::Tensor& t, int src) override {
    check_peer(*this, src, "recv");
    at::Tensor w = wire(t, t.scalar_type(), /*with_values=*/false);
    char* base = static_cast<char*>(w.data_ptr());
    for_chunks(w.numel(), [&](int64_t off, int count) {
      MPI_Request req;
      check(MPI_Irecv(base + off * w.element_size(), count, raw_type(w), src, kTag, comm_, &req), "recv");
      MPI_Status status = wait(req, "recv");
      int got = 0;
      MPI_Get_count(&status, raw_type(w), &got);
      KILN_CHECK(got == count, "recv on group ", name_, ": got ", got, " elements from rank ", src,
                 ", expected ", count, " (sender and receiver sizes differ)");
    });
    if (!w.is_same(t)) t.copy_(w);
  }

  void barrier() override {
    MPI_Request req;
    check(MPI_Ibarrier(comm_, &req), "barrier");
    wait(req, "barrier");
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    KILN_CHECK(color >= 0, "split on group ", name_, ": color ", color, " must be >= 0");
    // MPI_Comm_split blocks without a timeout: a timed barrier first proves every peer is here.
    MPI_Request req;
    check(MPI_Ibarrier(comm_, &req), "split");
    wait(req, "split");
    MPI_Comm sub = MPI_COMM_NULL;
    check(MPI_Comm_split(comm_, color, key, &sub), "split");
    return std::make_unique<MpiCommunicator>(sub, name, timeout_s_);
  }

 private:
  static constexpr int kTag = 7;

  // Calls fn(offset, count) over [0, n) in pieces MPI's int count can hold.
  template <typename Fn>
  void for_chunks(int64_t n, Fn&& fn) const {
    for (int64_t off = 0; off < n; off += max_count_)
      fn(off, static_cast<int>(std::min(max_count_, n - off)));
  }

  void check(int rc, const char* op) const {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING] = {0};
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw InternalError(
        str("kiln: MPI error in ", op, " on group ", name_, " (rank ", rank_, " of ", size_, "): ", msg));
  }

  // Polls req until it completes or the deadline passes; backs off to short sleeps so that
  // oversubscribed ranks (4 on 2 cores) leave the CPU to their peers.
  MPI_Status wait(MPI_Request& req, const char* op) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s_);
    MPI_Status status;
    for (int polls = 0;; ++polls) {
      int done = 0;
      check(MPI_Test(&req, &done, &status), op);
      if (done) return status;
      if (Clock::now() > deadline) timed_out(op);
      if (polls > 100) std::this_thread::sleep_for(std::chrono::microseconds(polls > 2000 ? 500 : 20));
    }
  }

  [[noreturn]] void timed_out(const char* op) const {
    std::fprintf(stderr, "%s\n", timeout_message(op, *this, timeout_s_).c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);  // MPI_Abort does not return; this keeps [[noreturn]] honest
  }

  // The buffer MPI reads or writes for t: t itself when it is contiguous, of dtype and where
  // MPI can reach it; otherwise a contiguous copy (on the host, pinned, for CUDA tensors when
  // MPI is not CUDA-aware). with_values copies t's values in.
  at::Tensor wire(const at::Tensor& t, at::ScalarType dtype, bool with_values) const {
    const bool on_device = !t.device().is_cpu();
#ifndef KILN_WITH_CUDA
    KILN_CHECK(!on_device, "MPI communicator on group ", name_, ": ", t.device(),
               " tensors need a CUDA build");
#endif
    at::Tensor w;
    if (on_device && !cuda_aware_) {
      w = at::empty(t.sizes(), at::TensorOptions().dtype(dtype).device(at::kCPU).pinned_memory(true));
      if (with_values) w.copy_(t);  // synchronous: ordered after the current stream's work
      return w;
    }
    if (t.is_contiguous() && t.scalar_type() == dtype) {
      w = t;
    } else {
      w = at::empty(t.sizes(), t.options().dtype(dtype));
      if (with_values) w.copy_(t);
    }
#ifdef KILN_WITH_CUDA
    if (on_device) c10::cuda::getCurrentCUDAStream(t.device().index()).synchronize();
#endif
    return w;
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::string name_;
  double timeout_s_;
  bool cuda_aware_;
  // Elements per MPI call: INT_MAX, or KILN_MPI_MAX_COUNT (tests lower it to exercise chunking).
  int64_t max_count_ = max_count_from_env();
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_world_communicator(double timeout_s) {
  KILN_CHECK(launch_info().under_mpi, "the MPI communicator needs kiln started by mpirun");
  MPI_Comm world = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &world);
  return std::make_unique<MpiCommunicator>(world, "world", timeout_s);
}

}  // namespace kiln
