// The NCCL backend (built when KILN_WITH_NCCL is defined): CUDA tensors, stream-ordered.
//
// Each communicator owns a communication stream. A collective records an event on the caller's
// current (compute) stream, makes the communication stream wait on it, enqueues the NCCL call,
// records a `done` event and makes the compute stream wait on that: the host never blocks, and
// compute that does not depend on the result overlaps the transfer. Tensors are marked as used
// on the communication stream so the caching allocator does not hand them out early.
//
// Timeouts: a watchdog thread per communicator polls the pending `done` events and
// ncclCommGetAsyncError. A collective still pending after timeout_s (a dead or hung peer), or an
// asynchronous NCCL error, prints one line naming the collective, the group and the rank,
// aborts the communicator (ncclCommAbort) and ends the process non-zero; under mpirun that
// tears the job down.
#ifdef KILN_WITH_NCCL
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include "parallel/communicator_backends.h"
#include "base/error.h"

namespace kiln {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(at::ScalarType s) {
  switch (s) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kInt:
      return ncclInt32;
    case at::kLong:
      return ncclInt64;
    case at::kByte:
      return ncclUint8;
    case at::kChar:
      return ncclInt8;
    case at::kBool:
      return ncclUint8;
    default:
      break;
  }
  KILN_CHECK(false, "NCCL has no type for dtype ", s);
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
  }
  return ncclSum;
}

bool overlaps(const at::Tensor& a, const at::Tensor& b) {
  const auto* a0 = static_cast<const char*>(a.data_ptr());
  const auto* b0 = static_cast<const char*>(b.data_ptr());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

class NcclCommunicator final : public Communicator {
 public:
  // Takes ownership of comm.
  NcclCommunicator(ncclComm_t comm, std::string name, int device, double timeout_s)
      : comm_(comm),
        name_(std::move(name)),
        device_(device),
        timeout_s_(timeout_s),
        stream_(
            c10::cuda::getStreamFromPool(/*isHighPriority=*/true, static_cast<c10::DeviceIndex>(device))) {
    nccl_check(ncclCommUserRank(comm_, &rank_), "init");
    nccl_check(ncclCommCount(comm_, &size_), "init");
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclCommunicator() override {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // Let enqueued work finish (bounded by the watchdog's deadline) before destroying.
      drained_.wait(lock, [this] { return pending_.empty(); });
      stop_ = true;
    }
    wake_.notify_all();
    watchdog_.join();
    ncclCommDestroy(comm_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  std::string backend() const override { return "nccl"; }

  void all_reduce(at::Tensor& t, ReduceOp op) override {
    check_device(t, "all_reduce");
    at::Tensor w = t.is_contiguous() ? t : t.contiguous();
    enqueue("all_reduce", {w}, [&](cudaStream_t s) {
      return ncclAllReduce(w.data_ptr(), w.data_ptr(), w.numel(), nccl_type(w.scalar_type()), nccl_op(op),
                           comm_, s);
    });
    if (!w.is_same(t)) t.copy_(w);  // on the compute stream, after the `done` event
  }

  void all_gather(const at::Tensor& shard, at::Tensor& out) override {
    check_all_gather_args(*this, shard, out);
    check_device(shard, "all_gather");
    check_device(out, "all_gather");
    at::Tensor s = shard.contiguous();
    const size_t n = s.numel();
    const bool in_place = s.data_ptr() == static_cast<char*>(out.data_ptr()) + rank_ * s.nbytes();
    if (!in_place && overlaps(s, out)) s = s.clone();
    enqueue("all_gather", {s, out}, [&](cudaStream_t st) {
      return ncclAllGather(s.data_ptr(), out.data_ptr(), n, nccl_type(s.scalar_type()), comm_, st);
    });
  }

  // No native all-gather-v: one broadcast per rank into its slice, fused in a group call.
  void all_gather_v(const at::Tensor& shard, at::Tensor& out, const std::vector<int64_t>& counts) override {
    check_all_gather_v_args(*this, shard, out, counts);
    check_device(shard, "all_gather_v");
    check_device(out, "all_gather_v");
    at::Tensor s = shard.contiguous();
    if (overlaps(s, out)) s = s.clone();
    const ncclDataType_t type = nccl_type(s.scalar_type());
    char* base = static_cast<char*>(out.data_ptr());
    enqueue("all_gather_v", {s, out}, [&](cudaStream_t st) {
      ncclResult_t rc = ncclGroupStart();
      int64_t offset = 0;
      for (int r = 0; r < size_ && rc == ncclSuccess; ++r) {
        void* dst = base + offset * out.element_size();
        if (counts[r] > 0)
          rc = ncclBroadcast(r == rank_ ? s.data_ptr() : dst, dst, counts[r], type, r, comm_, st);
        offset += counts[r];
      }
      const ncclResult_t end = ncclGroupEnd();
      return rc != ncclSuccess ? rc : end;
    });
  }

  void reduce_scatter(const at::Tensor& in, at::Tensor& out, ReduceOp op) override {
    check_reduce_scatter_args(*this, in, out);
    check_device(in, "reduce_scatter");
    check_device(out, "reduce_scatter");
    at::Tensor i = in.contiguous();
    at::Tensor o = out.is_contiguous() ? out : at::empty_like(out, at::MemoryFormat::Contiguous);
    if (overlaps(i, o)) i = i.clone();
    enqueue("reduce_scatter", {i, o}, [&](cudaStream_t st) {
      return ncclReduceScatter(i.data_ptr(), o.data_ptr(), o.numel(), nccl_type(o.scalar_type()), nccl_op(op),
                               comm_, st);
    });
    if (!o.is_same(out)) out.copy_(o);
  }

  void broadcast(at::Tensor& t, int root) override {
    KILN_CHECK(root >= 0 && root < size_, "broadcast on group ", name_, ": root ", root,
               " is not a rank of 0..", size_ - 1);
    check_device(t, "broadcast");
    at::Tensor w = t.is_contiguous() ? t : t.contiguous();
    enqueue("broadcast", {w}, [&](cudaStream_t st) {
      return ncclBroadcast(w.data_ptr(), w.data_ptr(), w.numel(), nccl_type(w.scalar_type()), root, comm_,
                           st);
    });
    if (!w.is_same(t)) t.copy_(w);
  }

  void send(const at::Tensor& t, int dst) override {
    check_peer(*this, dst, "send");
    check_device(t, "send");
    at::Tensor w = t.contiguous();
    enqueue("send", {w}, [&](cudaStream_t st) {
      return ncclSend(w.data_ptr(), w.numel(), nccl_type(w.scalar_type()), dst, comm_, st);
    });
  }

  void recv(at::Tensor& t, int src) override {
    check_peer(*this, src, "recv");
    check_device(t, "recv");
    at::Tensor w = t.is_contiguous() ? t : at::empty_like(t, at::MemoryFormat::Contiguous);
    enqueue("recv", {w}, [&](cudaStream_t st) {
      return ncclRecv(w.data_ptr(), w.numel(), nccl_type(w.scalar_type()), src, comm_, st);
    });
    if (!w.is_same(t)) t.copy_(w);
  }

  // A host-level barrier: a one-element all-reduce the host waits for (bounded by the timeout).
  void barrier() override {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    at::Tensor one = at::ones({1}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, device_));
    auto done = enqueue("barrier", {one}, [&](cudaStream_t st) {
      return ncclAllReduce(one.data_ptr(), one.data_ptr(), 1, ncclInt32, ncclSum, comm_, st);
    });
    const Clock::time_point until = deadline();
    while (!done->query()) {
      if (Clock::now() > until) timed_out("barrier");
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    KILN_CHECK(color >= 0, "split on group ", name_, ": color ", color, " must be >= 0");
    barrier();  // every peer is alive before the blocking ncclCommSplit
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    ncclComm_t sub = nullptr;
    nccl_check(ncclCommSplit(comm_, color, key, &sub, nullptr), "split");
    return std::make_unique<NcclCommunicator>(sub, name, device_, timeout_s_);
  }

 private:
  struct Pending {
    std::shared_ptr<c10::cuda::CUDAEvent> done;
    Clock::time_point deadline;
    const char* op;
  };

  Clock::time_point deadline() const {
    return Clock::now() +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  }

  void nccl_check(ncclResult_t rc, const char* op) const {
    if (rc == ncclSuccess) return;
    throw InternalError(str("kiln: NCCL error in ", op, " on group ", name_, " (rank ", rank_, " of ", size_,
                            "): ", ncclGetErrorString(rc)));
  }

  void check_device(const at::Tensor& t, const char* op) const {
    KILN_CHECK(t.is_cuda() && t.device().index() == device_, op, " on NCCL group ", name_, ": tensor on ",
               t.device(), ", expected cuda:", device_);
  }

  // compute stream -> [ready] -> comm stream: launch -> [done] -> compute stream.
  template <typename Launch>
  std::shared_ptr<c10::cuda::CUDAEvent> enqueue(const char* op, std::initializer_list<at::Tensor> tensors,
                                                Launch&& launch) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_));
    c10::cuda::CUDAEvent ready;
    ready.record(compute);
    ready.block(stream_);
    nccl_check(launch(stream_.stream()), op);
    for (const at::Tensor& t : tensors)
      c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), stream_);
    auto done = std::make_shared<c10::cuda::CUDAEvent>();
    done->record(stream_);
    done->block(compute);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      pending_.push_back({done, deadline(), op});
    }
    wake_.notify_all();
    return done;
  }

  // The watchdog: retires completed work, and ends the process on a timeout or NCCL error.
  void watch() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      wake_.wait_for(lock, std::chrono::milliseconds(50));
      while (!pending_.empty() && pending_.front().done->query()) pending_.pop_front();
      if (pending_.empty()) drained_.notify_all();
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        std::fprintf(stderr, "kiln: NCCL error on group %s (rank %d of %d, world rank %d): %s\n",
                     name_.c_str(), rank_, size_, launch_info().world_rank, ncclGetErrorString(async));
        abort_process();
      }
      if (!pending_.empty() && Clock::now() > pending_.front().deadline) timed_out(pending_.front().op);
    }
  }

  [[noreturn]] void timed_out(const char* op) {
    std::fprintf(stderr, "%s\n", timeout_message(op, *this, timeout_s_).c_str());
    abort_process();
  }

  [[noreturn]] void abort_process() {
    std::fflush(stderr);
    ncclCommAbort(comm_);
    std::_Exit(1);  // without finalize: mpirun tears the other ranks down
  }

  ncclComm_t comm_;
  int rank_ = 0, size_ = 1;
  std::string name_;
  int device_;
  double timeout_s_;
  c10::cuda::CUDAStream stream_;

  std::mutex mutex_;
  std::condition_variable wake_, drained_;
  std::deque<Pending> pending_;  // in enqueue order; completes in order on one stream
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace

int visible_cuda_devices() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

std::unique_ptr<Communicator> make_nccl_world_communicator(Communicator& bootstrap, int device,
                                                           double timeout_s) {
  const int count = visible_cuda_devices();
  if (count == 0) user_error("parallel.backend: nccl, but no CUDA device is visible; use mpi on the CPU");
  const int dev = device % count;
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(dev));
  ncclUniqueId id;
  if (bootstrap.rank() == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&id);
    KILN_CHECK(rc == ncclSuccess, "ncclGetUniqueId: ", ncclGetErrorString(rc));
  }
  at::Tensor id_bytes = at::from_blob(&id, {static_cast<int64_t>(sizeof(id))}, at::kByte);
  bootstrap.broadcast(id_bytes, 0);
  ncclComm_t comm = nullptr;
  const ncclResult_t rc = ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank());
  KILN_CHECK(rc == ncclSuccess, "ncclCommInitRank on rank ", bootstrap.rank(), " of ", bootstrap.size(), ": ",
             ncclGetErrorString(rc));
  return std::make_unique<NcclCommunicator>(comm, "world", dev, timeout_s);
}

}  // namespace kiln
#endif  // KILN_WITH_NCCL
