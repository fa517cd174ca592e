#!/usr/bin/env bash
# A single-node Slurm cluster on localhost (Debian 12: Slurm 22.05) for the tests and CI.
# Usage (as root):  scripts/slurm-sandbox.sh install|up|down|status
#   install: the Debian packages only (.ci/run); up installs them too when missing.
#   Exit code 3: Slurm cannot be installed here (not root, no apt-get, or apt-get failed).
#   BASE=/tmp/slurm-sandbox  WITH_DBD=1 (slurmdbd+MariaDB so sacct works)  AUTH=munge|none
#   CPUS=2  MEM_MB=4000  CRED_EXPIRE=10 (seconds a requeued job waits; Slurm default 120)
# Afterwards: export SLURM_CONF=$BASE/etc/slurm.conf  (no file is written under /etc/slurm)
set -euo pipefail
BASE=${BASE:-/tmp/slurm-sandbox}
WITH_DBD=${WITH_DBD:-1}
AUTH=${AUTH:-munge}
CPUS=${CPUS:-$(nproc)}
MEM_MB=${MEM_MB:-4000}
CRED_EXPIRE=${CRED_EXPIRE:-10}
FAKE_GPUS=${FAKE_GPUS:-0}   # >0: advertise N fake "gpu" GRES (dummy device files) to test --gres/--gpus requests
DB_PORT=${DB_PORT:-3307}
E=$BASE/etc; R=$BASE/run; L=$BASE/log
export SLURM_CONF=$E/slurm.conf

wait_for() {  # wait_for <seconds> <command...>
  local t=$1; shift
  for _ in $(seq 1 $((t * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "timeout waiting for: $*" >&2; return 1
}

install_pkgs() {
  local pkgs="slurmctld slurmd slurm-client munge"
  [ "$WITH_DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  if ! dpkg -s $pkgs >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      echo "cannot install Slurm: needs root and apt-get (packages: $pkgs)" >&2; exit 3
    fi
    # postinst cannot start services without systemd ("policy-rc.d denied"): harmless
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; } \
      || { echo "cannot install Slurm: apt-get failed (packages: $pkgs)" >&2; exit 3; }
  fi
}

write_conf() {
  mkdir -p $E $R $L $BASE/state $BASE/spool $BASE/mysql
  local cred=cred/munge
  [ "$AUTH" = none ] && cred=cred/none
  cat > $E/slurm.conf <<EOF
ClusterName=sandbox
SlurmctldHost=localhost
AuthType=auth/$AUTH
CredType=$cred
AuthInfo=cred_expire=$CRED_EXPIRE
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$R/slurmctld.pid
SlurmdPidFile=$R/slurmd.pid
SlurmctldLogFile=$L/slurmctld.log
SlurmdLogFile=$L/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# a requeued job starts at a scheduling pass after it is eligible again (passes every 30-60 s
# by default); every 2 s here, so the tests do not wait
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$L/jobcomp.txt
MinJobAge=300
EOF
  if [ "$WITH_DBD" = 1 ]; then
    cat >> $E/slurm.conf <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
EOF
    cat > $E/slurmdbd.conf <<EOF
AuthType=auth/$AUTH
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$L/slurmdbd.log
PidFile=$R/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
    chmod 600 $E/slurmdbd.conf   # slurmdbd refuses a world-readable conf
  else
    cat >> $E/slurm.conf <<EOF
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
EOF
  fi
  local gres=""
  if [ "$FAKE_GPUS" -gt 0 ]; then
    mkdir -p $BASE/fakegpu
    # char devices with the NVIDIA major (195) so Slurm sets CUDA_VISIBLE_DEVICES; plain files are
    # accepted for scheduling but then CUDA_VISIBLE_DEVICES is not set
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
      f=$BASE/fakegpu/nvidia$i; [ -c $f ] || { rm -f $f; mknod $f c 195 $i; }
    done
    echo "GresTypes=gpu" >> $E/slurm.conf
    echo "NodeName=localhost Name=gpu File=$BASE/fakegpu/nvidia[0-$((FAKE_GPUS - 1))]" > $E/gres.conf
    gres="Gres=gpu:$FAKE_GPUS"
  fi
  cat >> $E/slurm.conf <<EOF
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $gres State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  [ "$AUTH" = munge ] || return 0
  mkdir -p /run/munge && chown munge:munge /run/munge
  [ -s /etc/munge/munge.key ] || { mungekey -c -f; chown munge:munge /etc/munge/munge.key; }
  if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged   # daemonizes; pid in /run/munge/munged.pid
    cp /run/munge/munged.pid $R/munged.pid
  fi
  wait_for 10 bash -c 'munge -n | unmunge'
}

start_db() {
  [ "$WITH_DBD" = 1 ] || return 0
  local sock=$BASE/mysql/mysqld.sock
  if [ ! -d $BASE/mysql/data ]; then
    mariadb-install-db --no-defaults --datadir=$BASE/mysql/data --user=root \
      --auth-root-authentication-method=normal --skip-test-db >$L/mariadb-install.log 2>&1
  fi
  mariadbd --no-defaults --datadir=$BASE/mysql/data --user=root --socket=$sock \
    --pid-file=$R/mariadbd.pid --bind-address=127.0.0.1 --port=$DB_PORT \
    --log-error=$L/mariadb.err >/dev/null 2>&1 &
  wait_for 30 mariadb --socket=$sock -uroot -e 'select 1'
  mariadb --socket=$sock -uroot -e "
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  slurmdbd                                   # finds slurmdbd.conf next to $SLURM_CONF
  wait_for 30 bash -c '</dev/tcp/127.0.0.1/6819'   # slurmdbd listening
}

up() {
  install_pkgs
  write_conf
  start_munge
  start_db
  slurmctld -i                               # -i: ignore stale state from a previous run
  slurmd -N localhost                        # -N: node name differs from hostname
  wait_for 30 bash -c "sinfo -h -o %T | grep -q ."
  # a node drained in a previous run (e.g. config change) stays drained across restarts
  scontrol update nodename=localhost state=resume 2>/dev/null || true
  wait_for 60 bash -c "sinfo -h -o %T | grep -qx idle"
  [ "$WITH_DBD" = 1 ] && wait_for 30 bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx sandbox"
  echo "Slurm sandbox up. export SLURM_CONF=$SLURM_CONF"
}

down() {
  for d in slurmd slurmctld slurmdbd mariadbd munged; do
    if [ -s $R/$d.pid ]; then
      pid=$(cat $R/$d.pid)
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      rm -f $R/$d.pid
    fi
  done
}

status() { sinfo; squeue; }

case ${1:-up} in
  install) install_pkgs ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
