#!/usr/bin/env bash
# Start a single-node Slurm cluster on this host (for tests/test_slurm.py), or check that it runs.
#
#   bash tests/slurm/start_slurm.sh        # as root; idempotent, a few seconds once installed
#
# Installs Debian's slurm-wlm and munge if they are missing, writes /etc/slurm/slurm.conf and
# gres.conf from the templates beside this script (one node = this host, two partitions on it:
# `cpu` (default) and `gpu`, two schedulable GPUs backed by no device), starts munged, slurmctld
# and slurmd without systemd, waits for the node to be idle and runs `srun hostname`.
# A daemon is restarted only when the configuration it reads changed or it is not running.
# Environment: SLURM_TEST_FAKE_GPU=0 declares no GPU (jobs asking for one then cannot start).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
FAKE_GPU="${SLURM_TEST_FAKE_GPU:-1}"
HOST="$(hostname -s)"

log() { echo "start_slurm.sh: $*"; }
die() {
    echo "start_slurm.sh: ERROR: $*" >&2
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
        [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "run as root: it installs packages, writes $CONF_DIR and starts daemons"

# --- packages -------------------------------------------------------------------------------
missing=""
for tool in slurmctld slurmd sinfo srun scontrol munged munge unmunge; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    log "installing slurm-wlm and munge (missing:$missing)"
    command -v apt-get >/dev/null || die "no apt-get: install Slurm and munge by hand (missing:$missing)"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge \
        >/tmp/start_slurm.apt.log 2>&1 || { tail -n 20 /tmp/start_slurm.apt.log >&2; die "apt-get install slurm-wlm munge failed"; }
fi

# --- munge ------------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key || die "could not create /etc/munge/munge.key"
    fi
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    if alive /run/munge/munged.pid; then kill "$(cat /run/munge/munged.pid)"; sleep 1; fi
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munge -n | unmunge fails: munged is not working"
fi

# --- configuration ----------------------------------------------------------------------------
node_line="$(slurmd -C | head -n 1)"
case "$node_line" in
    NodeName=*) ;;
    *) die "unexpected output of 'slurmd -C': $node_line" ;;
esac
gres=""
[ "$FAKE_GPU" = 1 ] && gres="Gres=gpu:2"
install -d -m 0755 "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
render() {  # template -> stdout
    sed -e "s|@HOST@|$HOST|g" -e "s|@NODE@|$node_line|g" -e "s|@GRES@|$gres|g" \
        -e "s|@STATE@|$STATE_DIR|g" -e "s|@LOG@|$LOG_DIR|g" -e "s|@RUN@|$RUN_DIR|g" "$1"
}
changed=0
put() {  # rendered template -> destination, changed=1 if it differs
    local tmp
    tmp="$(mktemp)"
    render "$1" >"$tmp"
    if ! cmp -s "$tmp" "$2"; then install -m 0644 "$tmp" "$2"; changed=1; log "wrote $2"; fi
    rm -f "$tmp"
}
put "$HERE/slurm.conf.in" "$CONF_DIR/slurm.conf"
if [ "$FAKE_GPU" = 1 ]; then
    put "$HERE/gres.conf.in" "$CONF_DIR/gres.conf"
elif [ -f "$CONF_DIR/gres.conf" ]; then
    rm -f "$CONF_DIR/gres.conf"; changed=1
fi

# --- daemons ----------------------------------------------------------------------------------
stop() {  # pidfile: stop the daemon it names and wait for it to exit
    alive "$1" || return 0
    local pid
    pid="$(cat "$1")"
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    die "daemon $pid ($1) did not stop"
}
if [ "$changed" = 1 ]; then
    stop "$RUN_DIR/slurmd.pid"
    stop "$RUN_DIR/slurmctld.pid"
fi
if ! alive "$RUN_DIR/slurmctld.pid"; then
    log "starting slurmctld"
    slurmctld -i || die "slurmctld did not start"
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld does not answer 'scontrol ping'"
if ! alive "$RUN_DIR/slurmd.pid"; then
    log "starting slurmd"
    slurmd || die "slurmd did not start"
fi

# --- node up, one job through -----------------------------------------------------------------
state=""
for i in $(seq 150); do
    state="$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        drain*|down*) [ "$i" = 10 ] && scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) die "node $HOST is '${state:-unknown}', not idle: $(scontrol show node "$HOST" 2>&1 | grep -i reason || true)" ;;
esac
# (a freshly restarted slurmctld may still wait for slurmd to register: srun then queues)
err="$(mktemp)"
out="$(timeout 60 srun --partition=cpu -N 1 -n 1 -t 1 hostname 2>"$err")" || die "srun hostname failed: $(cat "$err")"
[ "$out" = "$(hostname)" ] || [ "$out" = "$HOST" ] || die "srun hostname printed '$out', expected '$HOST'"
if [ "$FAKE_GPU" = 1 ]; then
    out="$(timeout 60 srun --partition=gpu --gpus=1 -N 1 -n 1 -t 1 printenv CUDA_VISIBLE_DEVICES 2>"$err")" \
        || die "a one-GPU job did not run: $(cat "$err")"
fi
rm -f "$err"
log "Slurm is up: node $HOST $state, partitions $(sinfo -h -o %P | tr '\n' ' ')"
