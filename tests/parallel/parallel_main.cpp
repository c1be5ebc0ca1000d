// main() of kiln_parallel_tests, run under mpirun (scripts/test-parallel.sh).
//
// Every rank runs every test (collectives need all of them); only rank 0 prints gtest's report,
// other ranks print their own failures with a rank prefix, and the exit code is non-zero when
// any rank failed.
//
// `--kiln-fault=exit|finalize|abort|hang [--kiln-timeout=S]` runs the dead-peer scenario
// instead: rank 1 leaves (_Exit, std::exit, abort) or stalls between two all-reduces; the other
// ranks must end non-zero within S seconds.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "tests/parallel/harness.h"
#include "base/log.h"

namespace kiln::test {
namespace {

std::unique_ptr<Communicator> g_world;

// Non-zero ranks: failures only, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "%s%s:%d: failure\n%s\n", rank_prefix().c_str(), r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.summary());
  }
};

int run_fault(const std::string& mode, double timeout_s) {
  g_world = make_world_communicator("mpi", /*cuda=*/false, timeout_s);
  at::Tensor t = at::ones({4});
  g_world->all_reduce(t);  // one good step
  if (g_world->rank() == 1) {
    if (mode == "exit") std::_Exit(3);     // no MPI_Finalize, no destructors
    if (mode == "finalize") std::exit(3);  // static destructors run: MPI_Finalize
    if (mode == "abort") std::abort();
    if (mode == "hang") std::this_thread::sleep_for(std::chrono::hours(1));
  }
  g_world->all_reduce(t);  // the peers wait here for rank 1
  std::fprintf(stderr, "rank %d: the all_reduce returned without rank 1\n", g_world->rank());
  return 0;  // a pass here is the failure the script detects
}

}  // namespace

Communicator& world() { return *g_world; }

}  // namespace kiln::test

int main(int argc, char** argv) {
  const kiln::LaunchInfo& launch = kiln::launch_info();
  std::string fault;
  double timeout_s = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--kiln-fault=", 13) == 0) fault = argv[i] + 13;
    if (std::strncmp(argv[i], "--kiln-timeout=", 15) == 0) timeout_s = std::atof(argv[i] + 15);
  }
  if (!fault.empty()) return kiln::test::run_fault(fault, timeout_s);

  ::testing::InitGoogleTest(&argc, argv);
  at::set_num_threads(1);  // up to 4 ranks share 2 cores
  kiln::test::g_world = kiln::make_world_communicator("mpi", /*cuda=*/false, /*timeout_s=*/60);
  if (launch.world_rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new kiln::test::RankFailurePrinter);
  }
  kiln::log0("kiln_parallel_tests: ", kiln::launch_layout());
  const int rc = RUN_ALL_TESTS();
  at::Tensor failed = at::full({1}, rc != 0 ? 1 : 0, at::kInt);
  kiln::test::g_world->all_reduce(failed, kiln::ReduceOp::Max);
  const int any_failed = failed.item<int>();
  if (any_failed && rc == 0) kiln::log0("kiln_parallel_tests: a test failed on another rank");
  kiln::test::g_world.reset();  // before MPI_Finalize (the launch guard's destructor)
  return any_failed ? 1 : 0;
}
