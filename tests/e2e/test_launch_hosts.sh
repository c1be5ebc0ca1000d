#!/usr/bin/env bash
# kiln-launch on a cluster, without ssh: mpirun's remote agent (plm_rsh_agent) is a local script
# that runs each "host"'s daemon here with KILN_HOST_NAME set to the host it was asked for.
#  - a hostfile of two hosts (nodeA, nodeB, 2 slots each): ranks start on both, through the agent;
#  - nodeB kills its ranks (SIGKILL) a step into each of its first two attempts: each attempt is
#    logged with its cause and host, nodeB is excluded after its second failure, and the run
#    finishes on nodeA's 2 slots (the checkpoint reshards from dp 4 to dp 2) with the losses of an
#    uninterrupted 2-process run.
source "$(dirname "$0")/lib.sh"
make_tiny
timeout 300 mpirun --oversubscribe -np 2 "$KILN" train "$WORK/tiny.yaml" --set train.run_dir="$WORK/whole" \
  >"$WORK/whole.log" 2>&1 || { tail "$WORK/whole.log"; die "reference run"; }

cat >"$WORK/agent" <<SH
#!/usr/bin/env bash
# A fake ssh: options, then the host, then the remote command line.
while [[ "\${1:-}" == -* ]]; do shift; done
host=\$1; shift
echo "\$host" >>"$WORK/agent-hosts"
export KILN_HOST_NAME=\$host
# Each "host" keeps its own OpenMPI session directory, as separate machines do: two daemons making
# theirs under one /tmp race ("A call to mkdir was unable to create ... File exists") and hang.
mkdir -p "$WORK/ompi-\$host"
export OMPI_MCA_orte_tmpdir_base="$WORK/ompi-\$host"
fails=\$(cat "$WORK/\$host.fails" 2>/dev/null || echo 0)
if [ "\$host" = nodeB ] && [ "\$fails" -lt 2 ]; then
  echo \$((fails + 1)) >"$WORK/\$host.fails"
  rows() { wc -l <"$WORK/run/metrics.jsonl" 2>/dev/null || echo 0; }
  start=\$(rows)
  bash -c "\$*" & daemon=\$!
  until [ "\$(rows)" -ge \$((start + 2)) ]; do kill -0 \$daemon 2>/dev/null || exit 0; sleep 0.05; done
  pkill -9 -P \$daemon   # this host's ranks die, as when the node fails
  wait \$daemon
  exit 0
fi
exec bash -c "\$*"
SH
chmod +x "$WORK/agent"
printf 'nodeA slots=2\nnodeB slots=2\n' >"$WORK/hosts"
# Shared memory (vader) must not join ranks of different "hosts" on one machine: TCP between them.
export OMPI_MCA_btl=self,tcp
export KILN_TEST_STEP_SLEEP_S=0.3
KILN_LAUNCH_MPI_ARGS="--mca plm_rsh_agent $WORK/agent -x KILN_TEST_STEP_SLEEP_S" timeout 600 "$ROOT/launch/kiln-launch" \
  --hostfile "$WORK/hosts" --exclude-failed-hosts --restarts 3 --wait 0 --log-dir "$WORK/logs" "$WORK/tiny.yaml" \
  --set checkpoint.every=1 --set train.micro_batch_size=1 >"$WORK/launch.log" 2>&1 \
  || { tail -40 "$WORK/launch.log"; die "kiln-launch"; }
grep -q "^processes: 4 processes on 2 hosts: nodeA \[0-1\] nodeB \[2-3\] (mpirun)" "$WORK/logs/attempt-1.log" \
  || die "ranks did not start on nodeA and nodeB: $(grep processes: "$WORK/logs/attempt-1.log")"
sort -u "$WORK/agent-hosts" | tr '\n' ' ' | grep -q "^nodeA nodeB $" || die "agent hosts: $(cat "$WORK/agent-hosts")"
for a in 1 2; do
  grep -q "kiln-launch: attempt $a failed: exit [0-9]*\( ([^)]*)\)\?, a rank exited on signal 9 (Killed), host nodeB; restarting" "$WORK/launch.log" \
    || { grep kiln-launch: "$WORK/launch.log"; die "attempt $a's cause not logged"; }
done
grep -q "kiln-launch: excluding host nodeB (failed 2 times): 2 processes on 1 host(s) from now on" "$WORK/launch.log" \
  || die "nodeB not excluded"
grep -q "^processes: 2 processes on 1 host: nodeA \[0-1\] (mpirun)" "$WORK/logs/attempt-3.log" || die "attempt 3 not on nodeA only"
grep -q "kiln-launch: finished" "$WORK/launch.log" || die "not finished"
losses "$WORK/whole" >"$WORK/a"; losses "$WORK/run" >"$WORK/b"
echo -n "dp 4 on two hosts -> dp 2 on nodeA: "; close "$WORK/a" "$WORK/b" 1e-5 || die "losses differ"
grep kiln-launch: "$WORK/launch.log"
