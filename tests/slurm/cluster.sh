#!/usr/bin/env bash
# A real single-node SLURM cluster (munged, slurmctld, slurmd from Debian's packages) for
# the SLURM workflow test; runs as root without systemd, everything under one state folder.
#
#   tests/slurm/cluster.sh start STATE   # render slurm.conf + gres.conf, start the daemons
#   tests/slurm/cluster.sh check STATE   # wait until the node takes jobs (exit 1 if not)
#   tests/slurm/cluster.sh stop  STATE   # stop the daemons by their pid files
#   export SLURM_CONF=STATE/slurm.conf   # then sbatch/squeue/snakemake talk to it
#
# Jobs also need /etc/slurm/slurm.conf: snakemake's jobstep plugin drops SLURM_CONF from
# the environment of the `srun` it runs inside each job. `start` links it to STATE's file
# (refusing where a real one is there) and `stop` removes that link.
#
# Needs: apt-get install -y --no-install-recommends munge slurmctld slurmd slurm-client
# Settings (environment), defaulting to what profiles/slurm asks for as shipped, so that
# the profile runs here unchanged: LINEPO_SLURM_PARTITION (gpu), LINEPO_SLURM_GPU_MODEL
# (a100), LINEPO_SLURM_CPUS (16: the node declares them whatever the machine has, for
# cpus_per_gpu), LINEPO_SLURM_CTLD_PORT (16817), LINEPO_SLURM_SLURMD_PORT (16818).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ACTION="${1:?usage: cluster.sh start|check|stop STATE}"
STATE="${2:?usage: cluster.sh start|check|stop STATE}"
STATE="$(mkdir -p "$STATE" && cd "$STATE" && pwd)"
export SLURM_CONF="$STATE/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf

die() { echo "cluster.sh: $*" >&2; exit 1; }

stop_pidfile() {  # stop_pidfile FILE NAME: TERM the pid, then KILL after 10 s
    local file="$1" name="$2" pid
    [[ -s "$file" ]] || return 0
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { echo "cluster.sh: $name ($pid) ignored TERM; KILL" >&2; kill -KILL "$pid" 2>/dev/null || true; }
    fi
    rm -f "$file"
}

start() {
    [[ $EUID -eq 0 ]] || die "must run as root (slurmd runs jobs as their user)"
    for tool in munged slurmctld slurmd sbatch squeue scontrol; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install munge slurmctld slurmd slurm-client)"
    done
    id munge >/dev/null 2>&1 || die "no munge user (install Debian's munge package)"
    [[ -s "$STATE/slurmctld.pid" ]] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null && die "already running in $STATE"
    if [[ -e "$ETC_CONF" && ! -L "$ETC_CONF" ]]; then
        die "$ETC_CONF exists: this machine has a SLURM of its own"
    fi
    local other
    if [[ -L "$ETC_CONF" ]]; then  # another test cluster's link: refuse while it runs
        other="$(dirname "$(readlink "$ETC_CONF")")/slurmctld.pid"
        [[ -s "$other" ]] && kill -0 "$(cat "$other")" 2>/dev/null && die "another test cluster runs ($(readlink "$ETC_CONF"))"
    fi

    local node cpus mem_kb memory_mb gpu_model
    node="$(hostname -s)"
    cpus="${LINEPO_SLURM_CPUS:-16}"
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    memory_mb=$(( mem_kb / 1024 * 3 / 4 ))   # RealMemory below what the machine has
    gpu_model="${LINEPO_SLURM_GPU_MODEL:-a100}"
    mkdir -p "$STATE"/{ctld,spool,log,dev}
    # munged runs as the munge user, who may not traverse STATE (pytest's tmp folders are
    # 0700): its key, socket and logs go to a folder of its own, named in STATE/munge.
    MUNGE="$(mktemp -d /tmp/linepo-munge.XXXXXX)"
    ln -sfn "$MUNGE" "$STATE/munge"

    # Two character devices standing in for GPUs (same major/minor as /dev/null).
    for i in 0 1; do
        [[ -c "$STATE/dev/gpu$i" ]] || mknod -m 0666 "$STATE/dev/gpu$i" c 1 3 || die "mknod $STATE/dev/gpu$i failed"
    done
    sed -e "s|@MUNGE@|$MUNGE|g" -e "s|@STATE@|$STATE|g" -e "s|@NODE@|$node|g" -e "s|@CPUS@|$cpus|g" \
        -e "s|@MEMORY_MB@|$memory_mb|g" -e "s|@GPU_MODEL@|$gpu_model|g" \
        -e "s|@PARTITION@|${LINEPO_SLURM_PARTITION:-gpu}|g" \
        -e "s|@CTLD_PORT@|${LINEPO_SLURM_CTLD_PORT:-16817}|g" \
        -e "s|@SLURMD_PORT@|${LINEPO_SLURM_SLURMD_PORT:-16818}|g" \
        "$HERE/slurm.conf.in" > "$SLURM_CONF"
    echo "NodeName=$node Name=gpu Type=$gpu_model File=$STATE/dev/gpu[0-1]" > "$STATE/gres.conf"
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -sfn "$SLURM_CONF" "$ETC_CONF"

    # munged as the munge user, with a key of its own; root (slurm*, jobs) reaches its socket.
    head -c 1024 /dev/urandom > "$MUNGE/munge.key"
    chown -R munge:munge "$MUNGE"
    chmod 0700 "$MUNGE"
    chmod 0400 "$MUNGE/munge.key"
    runuser -u munge -- munged --force --socket="$MUNGE/munge.socket" \
        --key-file="$MUNGE/munge.key" --pid-file="$MUNGE/munged.pid" \
        --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed" \
        || die "munged failed: $(tail -3 "$MUNGE/munged.log" 2>/dev/null)"

    slurmctld -f "$SLURM_CONF" || die "slurmctld failed: $(tail -5 "$STATE/log/slurmctld.log" 2>/dev/null)"
    slurmd -f "$SLURM_CONF" -N "$node" || die "slurmd failed: $(tail -5 "$STATE/log/slurmd.log" 2>/dev/null)"
    echo "SLURM_CONF=$SLURM_CONF"
}

check() {  # the daemons are up and the node takes jobs, within 30 s
    local state="" deadline=$((SECONDS + 30)) pidfile
    while (( SECONDS < deadline )); do
        for pidfile in "$STATE/munge/munged.pid" "$STATE/slurmctld.pid" "$STATE/slurmd.pid"; do
            [[ -s "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null || state="down: $(basename "$pidfile" .pid)"
        done
        [[ "$state" == down:* ]] && break
        state="$(timeout 5 sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)"
        [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] && { echo "node $state"; return 0; }
        sleep 0.5
    done
    echo "cluster.sh: node not ready (${state:-no answer})" >&2
    tail -n 5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 2>/dev/null || true
    return 1
}

stop() {
    if [[ -L "$ETC_CONF" && "$(readlink "$ETC_CONF")" == "$SLURM_CONF" ]]; then rm -f "$ETC_CONF"; fi
    stop_pidfile "$STATE/slurmd.pid" slurmd
    stop_pidfile "$STATE/slurmctld.pid" slurmctld
    if [[ -L "$STATE/munge" ]]; then
        stop_pidfile "$STATE/munge/munged.pid" munged
        rm -rf -- "$(readlink "$STATE/munge")"
        rm -f "$STATE/munge"
    fi
}

case "$ACTION" in
    start) start ;;
    check) check ;;
    stop) stop ;;
    *) die "unknown action $ACTION (start|check|stop)" ;;
esac
