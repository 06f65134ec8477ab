#!/usr/bin/env bash
# A real single-node SLURM for the tests (facts: ../shared/SLURM-CI.md), on a machine without systemd
# or cgroup delegation, as root.
#
#   .ci/slurm.sh start   install the packages if missing, write a config under $SLURM_CI_DIR, start the
#                        daemons, wait for an idle node, run a warm-up job; prints `export SLURM_CONF=...`
#   .ci/slurm.sh stop    cancel every job, wait until none runs, then TERM slurmd, slurmctld (and munged)
#   .ci/slurm.sh env     print the export line of a running cluster
#
# Everything (config, state, spool, logs, pid files) lives in $SLURM_CI_DIR (default /tmp/map-slurm-ci),
# wiped on start. Clients and jobs find the cluster through SLURM_CONF=$SLURM_CI_DIR/slurm.conf.
# Authentication: auth/none where this SLURM still has it, else a private munged; SLURM_CI_AUTH=munge
# forces munge.
set -euo pipefail

DIR=${SLURM_CI_DIR:-/tmp/map-slurm-ci}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

say() { echo "slurm.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# wait_for SECONDS COMMAND...: poll every 0.1 s until COMMAND succeeds; fails after SECONDS
wait_for() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.1
  done
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "slurmctld/slurmd/sbatch are not installed and we are not root; install slurmctld slurmd slurm-client munge"
  say "installing slurmctld slurmd slurm-client munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

plugin_exists() {  # plugin_exists auth_none: is <name>.so installed in SLURM's plugin folder?
  find /usr/lib /usr/lib64 /usr/local/lib -path '*slurm*' -name "$1.so" 2>/dev/null | grep -q .
}

write_config() {
  local host cpus sockets cores threads mem_kb mem_mb auth_lines
  host=$(hostname -s)
  read -r cpus sockets cores threads < <(slurmd -C | head -1 | tr ' ' '\n' | awk -F= '
    $1=="CPUs"{c=$2} $1=="SocketsPerBoard"{s=$2} $1=="CoresPerSocket"{k=$2} $1=="ThreadsPerCore"{t=$2}
    END{print c, s, k, t}')
  mem_kb=$(awk '/^MemAvailable:/{print $2}' /proc/meminfo)
  mem_mb=$((mem_kb / 1024 * 9 / 10))
  if [ "${SLURM_CI_AUTH:-auto}" != munge ] && plugin_exists auth_none && plugin_exists cred_none; then
    auth_lines="AuthType=auth/none
CredType=cred/none"
  else  # newer SLURM dropped auth/none: a private munged on a socket in $DIR
    auth_lines="AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket"
  fi
  cat >"$CONF" <<EOF
# written by .ci/slurm.sh for a single-node test cluster
ClusterName=mapci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
$auth_lines
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0
MinJobAge=3600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munged() {
  grep -q '^AuthType=auth/munge' "$CONF" || return 0
  command -v munged >/dev/null || die "this SLURM has no auth/none and munged is not installed (apt-get install munge)"
  mkdir -p "$DIR/munge" && chmod 700 "$DIR/munge"
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed" --force
  wait_for 10 alive "$DIR/munged.pid" || die "munged did not start; see $DIR/log/munged.log"
}

start() {
  if alive "$DIR/slurmctld.pid"; then
    say "already running ($CONF)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  install_packages
  rm -rf "$DIR"
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  write_config
  start_munged
  slurmctld -f "$CONF" || die "slurmctld failed to start; see $DIR/log/slurmctld.log"
  wait_for 20 alive "$DIR/slurmctld.pid" || die "slurmctld did not write its pid file; see $DIR/log/slurmctld.log"
  wait_for 20 scontrol ping || die "slurmctld does not answer 'scontrol ping'; see $DIR/log/slurmctld.log"
  slurmd -f "$CONF" || die "slurmd failed to start; see $DIR/log/slurmd.log"
  wait_for 20 alive "$DIR/slurmd.pid" || die "slurmd did not write its pid file; see $DIR/log/slurmd.log"
  node_idle() { sinfo -h -N -o %t | grep -qx idle; }
  wait_for 30 node_idle || die "the node did not become idle: $(sinfo -h -N -o '%t %E'); see $DIR/log/"
  # the scheduler's first pass comes ~3 s after slurmctld starts: a warm-up job keeps it out of the tests
  local job
  job=$(sbatch --parsable --job-name=warmup --output=/dev/null --wrap=true)
  warm_done() { scontrol show job "$job" -o | grep -q 'JobState=COMPLETED'; }
  wait_for 30 warm_done || die "warm-up job $job did not complete: $(scontrol show job "$job" -o)"
  say "up: $(sinfo -h -N -o '%N %t %c CPUs %m MB'), config $CONF"
  echo "export SLURM_CONF=$CONF"
}

stop() {
  if ! alive "$DIR/slurmctld.pid" && ! alive "$DIR/slurmd.pid" && ! alive "$DIR/munged.pid"; then
    say "not running"
    return 0
  fi
  if alive "$DIR/slurmctld.pid"; then
    # a job's slurmstepd is not a child of slurmd and would outlive it: cancel and wait first
    scancel --full --quiet --partition=debug 2>/dev/null || true
    none_left() { [ -z "$(squeue -h -o %i 2>/dev/null)" ]; }
    wait_for 30 none_left || say "warning: jobs still listed after 30 s: $(squeue -h -o '%i %T' | tr '\n' ' ')"
  fi
  local name pid
  for name in slurmd slurmctld munged; do
    if alive "$DIR/$name.pid"; then
      pid=$(cat "$DIR/$name.pid")
      kill -TERM "$pid"
      gone() { ! kill -0 "$pid" 2>/dev/null; }
      wait_for 20 gone || say "warning: $name (pid $pid) still running 20 s after TERM"
    fi
  done
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) alive "$DIR/slurmctld.pid" || die "not running (start it with .ci/slurm.sh start)"; echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
