// Run-directory safety, resume compatibility and never-non-finite state (issue 10): the lock,
// the resume point when `latest` is missing or wrong, pruning by step number, refusals of
// resume: never / an older resume: DIR, the start-up environment check, the config comparison,
// NaN checkpoints refused, all-skipped runs failing, and the launcher environment (mpirun, srun).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <xxhash.h>

#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "base/error.h"
#include "models/safetensors.h"
#include "parallel/communicator.h"
#include "test_data_util.h"
#include "test_train_util.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/resume_policy.h"
#include "trainer/run_dir.h"
#include "trainer/state_check.h"
#include "trainer/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

Config tiny(const TempDir& dir, const std::string& run, std::vector<std::string> sets = {}) {
  return test::tiny_config(dir, run, std::move(sets), /*steps=*/4);
}
using test::error_of;
using test::metric_losses;

// A fake complete checkpoint directory.
void fake_checkpoint(const std::string& root, const std::string& name, int64_t step) {
  fs::create_directories(fs::path(root) / name);
  // A complete checkpoint of nothing (format 2: no files, no tensors), which verifies.
  test::write_text(root + "/" + name + "/state.json",
                   str("{\"format_version\": 2, \"step\": ", step, ", \"files\": {}, \"tensors\": {}}"));
}

TEST(RunDir, StepNumbersAndPruningByNumberNotName) {
  EXPECT_EQ(checkpoint_step_of("step-00000012"), 12);
  EXPECT_EQ(checkpoint_step_of("step-123456789"), 123456789);
  EXPECT_EQ(checkpoint_step_of("step-00000012.tmp"), -1);
  EXPECT_EQ(checkpoint_step_of("latest"), -1);
  EXPECT_EQ(checkpoint_step_of("step-"), -1);
  TempDir dir;
  const std::string root = dir / "checkpoints";
  // Past 8 digits the zero-padded names no longer sort as numbers: "step-100000000" < "step-99999999".
  for (int64_t s : {99999998LL, 99999999LL, 100000000LL, 100000001LL})
    fake_checkpoint(root, str("step-", s), s);
  fake_checkpoint(root, "step-00000007", 7);
  prune_checkpoints(root, 2);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(root)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"step-100000000", "step-100000001"}));
}

TEST(RunDir, ResumePointWhenLatestIsMissingOrWrong) {
  TempDir dir;
  TrainConfig t;
  t.run_dir = dir / "run";
  EXPECT_EQ(resolve_resume(t), "");  // nothing there: a fresh run
  const std::string root = checkpoint_root(t.run_dir);
  fake_checkpoint(root, "step-00000002", 2);
  fake_checkpoint(root, "step-00000004", 4);
  fs::create_directories(root + "/step-00000006");  // incomplete: no state.json
  fs::create_directories(root + "/step-00000008.tmp");
  // latest missing: the newest complete one, not random init.
  EXPECT_EQ(fs::path(resolve_resume(t)).filename(), "step-00000004");
  // latest naming an incomplete or missing directory, or garbage.
  for (const char* bad : {"step-00000006\n", "step-00000099\n", "\n", "../../etc\n"}) {
    test::write_text(root + "/latest", bad);
    EXPECT_EQ(fs::path(resolve_resume(t)).filename(), "step-00000004") << bad;
  }
  // latest lagging behind a newer complete checkpoint (a crash between rename and latest).
  test::write_text(root + "/latest", "step-00000002\n");
  EXPECT_EQ(fs::path(resolve_resume(t)).filename(), "step-00000004");
  test::write_text(root + "/latest", "step-00000004\n");
  EXPECT_EQ(fs::path(resolve_resume(t)).filename(), "step-00000004");
  EXPECT_EQ(fs::path(auto_resume_checkpoint(t.run_dir)).filename(), "step-00000004");

  // resume: never over checkpoints is refused, saying what to do.
  t.resume = "never";
  const std::string never = error_of([&] { resolve_resume(t); });
  EXPECT_HAS(never, "train.resume: never, but ");
  EXPECT_HAS(never, "step-00000004");
  EXPECT_HAS(never, "set another train.run_dir");
  // resume: DIR older than what the run dir holds would interleave with it: refused.
  t.resume = root + "/step-00000002";
  EXPECT_HAS(error_of([&] { resolve_resume(t); }), "already holds newer checkpoints (up to step-00000004)");
  t.resume = root + "/step-00000004";
  EXPECT_EQ(resolve_resume(t), root + "/step-00000004");
  // resume: DIR elsewhere into an empty run dir is fine; an incomplete DIR is not.
  TrainConfig other;
  other.run_dir = dir / "fresh";
  other.resume = root + "/step-00000004";
  EXPECT_EQ(resolve_resume(other), root + "/step-00000004");
  other.resume = root + "/step-00000006";
  EXPECT_HAS(error_of([&] { resolve_resume(other); }), "is not a complete checkpoint directory");
}

TEST(RunDir, LockNamesItsHolderAndIsReleased) {
  TempDir dir;
  fs::create_directories(dir / "run");
  {
    RunDirLock first(dir / "run");
    EXPECT_HAS(test::read_text(RunDirLock::lock_path(dir / "run")), str("pid ", ::getpid(), " on host "));
    const std::string second = error_of([&] { RunDirLock again(dir / "run"); });
    EXPECT_HAS(second, str("is in use by another kiln train (pid ", ::getpid(), " on host "));
  }
  RunDirLock after(dir / "run");  // released with the first
}

TEST(RunDir, EnvironmentCheckedAtStart) {
  TempDir dir;
  test::write_text(dir / "afile", "x");
  EXPECT_HAS(error_of([&] { check_run_dir_environment(dir / "afile", 0); }),
             "afile is a file, not a directory");
  fs::create_directories(dir / "run");
  test::write_text(dir / "run/checkpoints", "x");
  EXPECT_HAS(error_of([&] { check_run_dir_environment(dir / "run", 0); }),
             "run/checkpoints is a file, not a directory");
  check_run_dir_environment(dir / "ok/deeper", 1 << 20);
  EXPECT_TRUE(fs::is_directory(dir / "ok/deeper/checkpoints"));
  EXPECT_HAS(error_of([&] { check_run_dir_environment(dir / "ok/deeper", int64_t(1) << 60); }),
             "one checkpoint needs about");
}

// check_run_dir_environment(run_dir, 0) as a user the permission bits apply to: in a child that
// drops to nobody when the test runs as root (root writes through any mode). The error's text.
std::string environment_error_as_user(const std::string& run_dir) {
  int fds[2];
  if (::pipe(fds) != 0) return "(pipe failed)";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    std::string msg = "(no error)";
    if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0))
      msg = "(cannot drop root)";
    else {
      try {
        check_run_dir_environment(run_dir, 0);
      } catch (const UserError& e) {
        msg = e.what();
      }
    }
    [[maybe_unused]] const ssize_t n = ::write(fds[1], msg.data(), msg.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string out;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return out;
}

TEST(RunDir, UnwritableRunDirIsNamedAtStart) {
  TempDir dir;
  const auto r_x = fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                   fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec;
  fs::permissions(dir.str(), r_x | fs::perms::owner_write);  // nobody may walk into it
  fs::create_directories(dir / "ro/checkpoints");
  fs::create_directories(dir / "bare");
  fs::permissions(dir / "ro/checkpoints", r_x);
  fs::permissions(dir / "bare", r_x);
  // checkpoints/ there but read-only: the write probe names it.
  EXPECT_EQ(environment_error_as_user(dir / "ro"),
            str("train.run_dir: ", dir / "ro/checkpoints",
                " is not writable (Permission denied); set a writable train.run_dir"));
  // run_dir read-only, checkpoints/ not there yet: it cannot be made.
  EXPECT_EQ(environment_error_as_user(dir / "bare"),
            str("train.run_dir: cannot create ", dir / "bare/checkpoints",
                ": Permission denied; set a writable train.run_dir"));
  fs::permissions(dir / "ro/checkpoints", fs::perms::all);
  EXPECT_EQ(environment_error_as_user(dir / "ro"), "(no error)");  // writable again: accepted
}

TEST(RunDir, TrainChecksSpaceForOneCheckpointBeforeAnyStep) {
  TempDir dir;
  // A model whose checkpoint (12 bytes a parameter) no disk holds; its shape-only config is all
  // the check reads, so nothing of that size is ever allocated.
  const Config big = tiny(dir, "run", {"model.hidden_size=65536", "model.num_layers=1000"});
  ASSERT_GT(checkpoint_bytes(big), int64_t(1) << 48);  // 256 TiB
  const std::string err = error_of([&] { train(big); });
  EXPECT_HAS(err, str("train.run_dir: ", checkpoint_root(dir / "run"), " has "));
  EXPECT_HAS(err, str(" free, one checkpoint needs about ", checkpoint_bytes(big) / (1 << 20), " MiB"));
  EXPECT_FALSE(fs::exists(dir / "run/metrics.jsonl"));  // nothing trained
  EXPECT_FALSE(fs::exists(dir / "run/config.yaml"));
}

TEST(RunDir, TrainRefusesARunDirThatIsAFileBeforeAnyStep) {
  TempDir dir;
  test::write_text(dir / "run", "not a directory");
  EXPECT_HAS(error_of([&] { train(tiny(dir, "run")); }), "is a file, not a directory");
  fs::create_directories(dir / "run2");
  test::write_text(dir / "run2/checkpoints", "x");
  EXPECT_HAS(error_of([&] { train(tiny(dir, "run2")); }), "run2/checkpoints is a file");
  EXPECT_FALSE(fs::exists(dir / "run2/metrics.jsonl"));  // nothing trained
}

TEST(RunDir, TrainRecoversFromDeletedLatestAndRefusesNever) {
  TempDir dir;
  const std::vector<double> whole = train(tiny(dir, "whole")).losses;
  Config cfg = tiny(dir, "run", {"checkpoint.every=1", "checkpoint.keep_last=5"});
  TrainOptions two;
  two.exit_after = 2;
  train(cfg, two);
  const std::string root = checkpoint_root(cfg.train.run_dir);
  fs::remove(root + "/latest");
  TrainResult rest = train(cfg);
  EXPECT_EQ(rest.first_step, 2);  // not random init
  EXPECT_EQ(metric_losses(cfg.train.run_dir), whole);
  // resume: never in the used directory: refused, every checkpoint left alone.
  const std::string never = error_of([&] { train(tiny(dir, "run", {"train.resume=never"})); });
  EXPECT_HAS(never, "train.resume: never");
  EXPECT_EQ(complete_checkpoints(cfg.train.run_dir).size(), 4u);
  EXPECT_EQ(fs::path(auto_resume_checkpoint(cfg.train.run_dir)).filename(), "step-00000004");
}

// Rewrites one tensor of every optim-*.safetensors file of a checkpoint.
// Rewrites the checkpoint's pieces of `name` to `value`, and its recorded sizes and checksums
// with them, as a checkpoint saved from such a state would be.
void poke_optimizer_state(const std::string& ckpt, const std::string& name, float value) {
  nlohmann::json state = nlohmann::json::parse(test::read_text(ckpt + "/state.json"));
  for (const auto& e : fs::directory_iterator(ckpt)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("shard-", 0) != 0) continue;
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    std::map<std::string, std::string> meta;
    {
      SafetensorsFile st(e.path().string());
      meta = st.metadata();
      for (const auto& n : st.names()) {
        at::Tensor t = st.tensor(n).clone();
        if (n.rfind(name + "#", 0) == 0) t.fill_(value);
        tensors.emplace_back(n, t);
      }
    }
    write_safetensors(e.path().string(), tensors, meta);
    const std::string bytes = test::read_text(e.path().string());
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx",
                  static_cast<unsigned long long>(XXH3_64bits(bytes.data(), bytes.size())));
    state["files"][f] = {{"bytes", static_cast<int64_t>(bytes.size())}, {"xxh3_64", hex}};
  }
  test::write_text(ckpt + "/state.json", state.dump(2));
}

// A checkpoint holding NaN (saved by an older kiln, or damaged with its checksums rewritten) is
// unusable like a corrupt one: verify names the file and the tensor, auto-resume skips it for the
// earlier one (with a warning) and the run ends with the uninterrupted losses; when it is the only
// one, or named by train.resume, the run is refused and nothing is saved.
TEST(StateCheck, NaNCheckpointIsSkippedForTheEarlierOneOrRefused) {
  TempDir dir;
  const std::vector<double> whole = train(tiny(dir, "whole")).losses;
  Config cfg = tiny(dir, "run", {"checkpoint.every=1", "checkpoint.keep_last=5"});
  TrainOptions three;
  three.exit_after = 3;
  train(cfg, three);
  const std::string root = checkpoint_root(cfg.train.run_dir);
  const std::string nan_ckpt = root + "/step-00000003";
  poke_optimizer_state(nan_ckpt, "master/model.layers.0.mlp.up_proj.weight", NAN);
  const std::string problem = nan_ckpt +
                              "/shard-00000-of-00001.safetensors: tensor "
                              "'master/model.layers.0.mlp.up_proj.weight' holds NaN or infinite values";
  EXPECT_EQ(verify_checkpoint(nan_ckpt).problem, problem);
  testing::internal::CaptureStderr();
  const TrainResult rest = train(cfg);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(rest.first_step, 2);
  EXPECT_HAS(log, "warning: checkpoint " + nan_ckpt + " skipped: " + problem);
  EXPECT_EQ(metric_losses(cfg.train.run_dir), whole);
  EXPECT_TRUE(verify_checkpoint(nan_ckpt).ok());  // saved again, from finite state

  Config only = tiny(dir, "only");
  TrainOptions two;
  two.exit_after = 2;
  train(only, two);
  const std::string ckpt = checkpoint_root(only.train.run_dir) + "/step-00000002";
  poke_optimizer_state(ckpt, "exp_avg_sq/lm_head.weight", INFINITY);
  EXPECT_HAS(error_of([&] { train(only); }),
             "no usable checkpoint in " + checkpoint_root(only.train.run_dir));
  EXPECT_HAS(error_of([&] { train(tiny(dir, "elsewhere", {"train.resume=" + ckpt})); }),
             "tensor 'exp_avg_sq/lm_head.weight' holds NaN or infinite values");
  EXPECT_EQ(complete_checkpoints(only.train.run_dir).size(), 1u);  // no NaN checkpoint written
  EXPECT_FALSE(fs::exists(dir / "elsewhere/checkpoints/latest"));
  EXPECT_EQ(first_non_finite({}, {{"w", at::tensor({1.0f, INFINITY})}}), "w");
  EXPECT_EQ(first_non_finite({}, {{"w", at::tensor({1.0f, 2.0f})}}), "");
}

TEST(StateCheck, NoCheckpointFromNonFiniteState) {
  auto world = make_world_communicator("auto", /*cuda=*/false, /*timeout_s=*/10);
  const c10::Device cpu(c10::kCPU);
  TensorSlice ok{"master/w", {2}, Box{{0}, {2}}, at::tensor({1.0f, 2.0f})};
  TensorSlice bad{"exp_avg_sq/w", {2}, Box{{0}, {2}}, at::tensor({1.0f, INFINITY})};
  EXPECT_NO_THROW(require_finite_state(*world, cpu, {ok}, {{"w", at::tensor({1.0f})}}, "saving"));
  EXPECT_HAS(error_of([&] {
               require_finite_state(*world, cpu, {ok, bad}, {}, "not saving the checkpoint of step 7");
             }),
             "not saving the checkpoint of step 7: 'exp_avg_sq/w' holds NaN or infinite values");
  EXPECT_HAS(error_of([&] {
               require_finite_state(*world, cpu, {ok}, {{"w", at::tensor({NAN})}}, "x");
             }),
             "x: 'w' holds NaN or infinite values");
}

// Finite weights and gradients, but a first moment so large that the AdamW update overflows:
// step 3 leaves infinite master weights, and its checkpoint is refused before anything is written.
TEST(StateCheck, TrainNeverSavesNonFiniteState) {
  TempDir dir;
  Config cfg = tiny(dir, "run", {"checkpoint.every=1", "checkpoint.keep_last=5"});
  TrainOptions two;
  two.exit_after = 2;
  train(cfg, two);
  poke_optimizer_state(checkpoint_root(cfg.train.run_dir) + "/step-00000002",
                       "exp_avg/model.layers.0.mlp.up_proj.weight", 3e38f);
  const std::string err = error_of([&] { train(cfg); });
  EXPECT_HAS(err, "not saving the checkpoint of step 3: '");
  EXPECT_HAS(err, "model.layers.0.mlp.up_proj.weight' holds NaN or infinite values");
  const auto left = complete_checkpoints(cfg.train.run_dir);
  ASSERT_EQ(left.size(), 2u);  // steps 1 and 2: nothing of step 3, not even a temporary directory
  EXPECT_EQ(left.back().first, 2);
  EXPECT_FALSE(fs::exists(checkpoint_root(cfg.train.run_dir) + "/step-00000003.tmp"));
  EXPECT_EQ(fs::path(auto_resume_checkpoint(cfg.train.run_dir)).filename(), "step-00000002");
}

TEST(StateCheck, ARunWhoseEveryStepIsSkippedFails) {
  TempDir dir;
  Config cfg = tiny(dir, "run");
  TrainOptions two;
  two.exit_after = 2;
  train(cfg, two);
  // Finite, but so large that the logits overflow: every later gradient is non-finite.
  const std::string ckpt = checkpoint_root(cfg.train.run_dir) + "/step-00000002";
  poke_optimizer_state(ckpt, "master/model.norm.weight", 3e38f);  // (3e38)^2 overflows in the head
  poke_optimizer_state(ckpt, "master/lm_head.weight", 3e38f);
  const std::string err = error_of([&] { train(cfg); });
  EXPECT_HAS(err, "training diverged: all 2 steps of this run had non-finite gradients and were skipped");
  EXPECT_EQ(complete_checkpoints(cfg.train.run_dir).size(),
            1u);  // the skipped steps are not saved as progress
  EXPECT_NO_THROW(require_some_step_trained(3, 2, ""));
  EXPECT_NO_THROW(require_some_step_trained(0, 0, ""));
}

TEST(ResumePolicy, ShapeChangesAreFatalAndLegitimateOnesWarnOncePerKey) {
  TempDir dir;
  const Config base = tiny(dir, "run");
  auto findings = [&](std::vector<std::string> sets) {
    return compare_for_resume(base, 1, tiny(dir, "run", sets), 1, /*step=*/10);
  };
  EXPECT_TRUE(findings({"train.log_every=3", "parallel.zero=2", "train.precision=fp32"}).empty());
  for (const auto& [set, key, a, b] :
       std::vector<std::tuple<std::string, std::string, std::string, std::string>>{
           {"model.num_layers=3", "model.num_layers", "2", "3"},
           {"model.vocab_size=800", "model.vocab_size", "700", "800"},
           {"model.hidden_size=64", "model.hidden_size", "32", "64"},
           {"model.num_kv_heads=4", "model.num_kv_heads", "2", "4"},
           {"model.tie_embeddings=true", "model.tie_embeddings", "false", "true"}}) {
    auto f = findings({set});  // hidden_size also changes the derived ffn size: a second finding
    ASSERT_GE(f.size(), 1u) << set;
    EXPECT_TRUE(f[0].fatal);
    EXPECT_EQ(f[0].key, key);
    EXPECT_HAS(f[0].line, str(key, ": the checkpoint has ", a, ", the config ", b));
  }
  struct Legit {
    std::string set, key, says;
  };
  for (const Legit& l : std::vector<Legit>{
           {"data.seq_len=48", "data.seq_len",
            "changed from 32 to 48: from step 11 rows are packed to 48 tokens"},
           {"train.global_batch_size=8", "train.global_batch_size",
            "changed from 4 to 8: from step 11 each step takes 8 rows; the data position is kept as a step "
            "count, so "
            "the run goes on at row 80 of the order drawn for batch 8 (the checkpoint had consumed 40 rows)"},
           {"train.lr=0.02", "train.lr",
            "changed from 0.01 to 0.02: the learning-rate schedule changes; lr at step 11"},
           {"train.schedule=linear", "train.schedule", "changed from cosine to linear"},
           {"train.steps=40", "train.steps", "changed from 4 to 40: the run ends at step 40"},
           {"data.mix=telechat", "data.mix", "changed from proportional to telechat"},
           {"train.seed=7", "train.seed",
            "changed from 1234 to 7: ignored on resume: the weights come from the checkpoint and the data "
            "order "
            "follows the checkpoint's seed (1234)"}}) {
    auto f = findings({l.set});
    ASSERT_EQ(f.size(), 1u) << l.set;
    EXPECT_FALSE(f[0].fatal);
    EXPECT_EQ(f[0].key, l.key);
    EXPECT_HAS(f[0].line, "warning: resume: " + l.key + " " + l.says);
  }
  // global_batch_size 0 means micro x dp: the effective batch is compared.
  Config implicit = tiny(dir, "run", {"train.global_batch_size=0"});
  EXPECT_TRUE(compare_for_resume(implicit, 2, tiny(dir, "run"), 1, 10).empty());  // 2 x 2 = 4 both
}

TEST(ResumePolicy, TrainRefusesAChangedLayerCountNamingBothValues) {
  TempDir dir;
  Config cfg = tiny(dir, "run", {"train.steps=2"});
  train(cfg);
  const std::string err = error_of([&] { train(tiny(dir, "run", {"train.steps=3", "model.num_layers=3"})); });
  EXPECT_HAS(err, "step-00000002: model.num_layers: the checkpoint has 2, the config 3");
  // seq_len for context extension is allowed, and the run goes on from the checkpoint.
  TrainResult longer = train(tiny(dir, "run", {"train.steps=3", "data.seq_len=48"}));
  EXPECT_EQ(longer.first_step, 2);
  EXPECT_EQ(longer.last_step, 3);
}

// check_resume_compatibility on a real checkpoint (its stored config.yaml read back), where
// `sets` change the config: the UserError's text ("" when none) and the lines it logged.
struct ResumeCheck {
  std::string error;
  std::vector<std::string> lines;
};
ResumeCheck check_resume(const std::string& ckpt, const Config& cfg) {
  ResumeCheck r;
  testing::internal::CaptureStderr();
  try {
    check_resume_compatibility(ckpt, cfg, /*world_size=*/1);
  } catch (const UserError& e) {
    r.error = e.what();
  }
  std::stringstream err(testing::internal::GetCapturedStderr());
  for (std::string line; std::getline(err, line);)
    if (!line.empty()) r.lines.push_back(line);
  return r;
}

// Every case of the policy (issue 10), each on its own: an unusable change is refused naming the
// key, the checkpoint's value and the config's, and logs nothing; an allowed change logs exactly
// one warning line naming its key; an unchanged config logs nothing.
TEST(ResumePolicy, EachCaseOnARealCheckpoint) {
  TempDir dir;
  const Config cfg = tiny(dir, "run", {"train.steps=2"});
  train(cfg);
  const std::string ckpt = checkpoint_root(cfg.train.run_dir) + "/step-00000002";
  fs::copy_file(dir / "data.json", dir / "data2.json");
  EXPECT_EQ(check_resume(ckpt, tiny(dir, "run", {"train.steps=2"})).lines, std::vector<std::string>{});
  const std::string ffn = str(cfg.model.ffn_size());
  for (const auto& [set, key, a, b] :
       std::vector<std::tuple<std::string, std::string, std::string, std::string>>{
           {"model.arch=baichuan", "model.arch", "llama", "baichuan"},
           {"model.vocab_size=800", "model.vocab_size", "700", "800"},
           {"model.hidden_size=64", "model.hidden_size", "32", "64"},
           {"model.num_layers=3", "model.num_layers", "2", "3"},
           {"model.num_layers=1", "model.num_layers", "2", "1"},
           {"model.num_heads=8", "model.num_heads", "4", "8"},
           {"model.num_kv_heads=4", "model.num_kv_heads", "2", "4"},
           {"model.ffn_hidden_size=40", "model.ffn_hidden_size", ffn, "40"},
           {"model.tie_embeddings=true", "model.tie_embeddings", "false", "true"},
           {"model.position=alibi", "model.position", "rope", "alibi"},
           {"lora.rank=4", "lora.rank", "0", "4"}}) {
    const ResumeCheck r = check_resume(ckpt, tiny(dir, "run", {"train.steps=2", set}));
    EXPECT_EQ(r.error,
              str(ckpt, ": ", key, ": the checkpoint has ", a, ", the config ", b,
                  "; a checkpoint resumes only on its own model shape (set ", key, ": ", a,
                  ", or start a new train.run_dir, with model.init_from: ckpt:DIR for what still fits)"))
        << set;
    EXPECT_EQ(r.lines, std::vector<std::string>{}) << set;
  }
  for (const auto& [set, key, from_to] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"data.seq_len=48", "data.seq_len", "32 to 48"},
           {"train.global_batch_size=8", "train.global_batch_size", "4 to 8"},
           {"train.lr=0.02", "train.lr", "0.01 to 0.02"},
           {"train.min_lr=0.002", "train.min_lr", "0.001 to 0.002"},
           {"train.warmup_steps=3", "train.warmup_steps", "1 to 3"},
           {"train.schedule=constant", "train.schedule", "cosine to constant"},
           {"train.steps=9", "train.steps", "2 to 9"},
           {"data.mixture=" + (dir / "data2.json"), "data.mixture",
            str(dir / "data.json", " to ", dir / "data2.json")},
           {"data.mix=telechat", "data.mix", "proportional to telechat"},
           {"data.schedule=[{step: 5, weights: {pretrain.jsonl: 1, sft_firefly.jsonl: 1}}]", "data.schedule",
            "[] to [{step: 5, weights: {pretrain.jsonl: 1, sft_firefly.jsonl: 1}}]"},
           {"model.max_seq_len=128", "model.max_seq_len", "64 to 128"},
           {"model.rope_scaling.type=linear", "model.rope_scaling", "none to linear x"},
           {"model.rope_theta=500000", "model.rope_theta", "10000 to 500000"},
           {"train.seed=7", "train.seed", "1234 to 7"}}) {
    std::vector<std::string> sets = {set};
    if (key != "train.steps") sets.insert(sets.begin(), "train.steps=2");
    const ResumeCheck r = check_resume(ckpt, tiny(dir, "run", sets));
    EXPECT_EQ(r.error, "") << set;
    ASSERT_EQ(r.lines.size(), 1u) << set << ": " << testing::PrintToString(r.lines);
    EXPECT_EQ(r.lines[0].rfind(str("warning: resume: ", key, " changed from ", from_to), 0), 0u)
        << r.lines[0];
  }
  // Several allowed changes at once: one line each, in the policy's order.
  const ResumeCheck both =
      check_resume(ckpt, tiny(dir, "run", {"train.steps=2", "data.seq_len=48", "train.seed=7"}));
  ASSERT_EQ(both.lines.size(), 2u);
  EXPECT_HAS(both.lines[0], "warning: resume: data.seq_len changed");
  EXPECT_HAS(both.lines[1], "warning: resume: train.seed changed");
}

TEST(Launch, RankWorldAndLocalRankFromMpirunOrSlurm) {
  auto env_of = [](std::map<std::string, std::string> m) {
    return launch_env([m](const char* v) -> const char* {
      auto it = m.find(v);
      return it == m.end() ? nullptr : it->second.c_str();
    });
  };
  LaunchEnv none = env_of({});
  EXPECT_EQ(none.launcher, "");
  LaunchEnv ompi = env_of({{"OMPI_COMM_WORLD_RANK", "3"},
                           {"OMPI_COMM_WORLD_SIZE", "8"},
                           {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                           {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_EQ(ompi.launcher, "mpirun");
  EXPECT_EQ(std::vector<int>({ompi.rank, ompi.size, ompi.local_rank, ompi.local_size}),
            std::vector<int>({3, 8, 1, 2}));
  LaunchEnv slurm = env_of({{"SLURM_PROCID", "5"},
                            {"SLURM_STEP_NUM_TASKS", "16"},
                            {"SLURM_NTASKS", "32"},
                            {"SLURM_LOCALID", "1"},
                            {"SLURM_STEP_TASKS_PER_NODE", "4"},
                            {"PMIX_RANK", "5"}});
  EXPECT_EQ(slurm.launcher, "srun");
  EXPECT_EQ(std::vector<int>({slurm.rank, slurm.size, slurm.local_rank, slurm.local_size}),
            std::vector<int>({5, 16, 1, 4}));
  LaunchEnv uneven = env_of({{"SLURM_PROCID", "0"},
                             {"SLURM_STEP_NUM_TASKS", "7"},
                             {"SLURM_LOCALID", "0"},
                             {"SLURM_STEP_TASKS_PER_NODE", "2(x3),1"}});
  EXPECT_EQ(uneven.local_size, -1);  // left to MPI's shared-memory split
  // The batch script itself (no job step) is not a launch of several tasks.
  EXPECT_EQ(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}}).launcher, "");
}

}  // namespace
}  // namespace kiln
