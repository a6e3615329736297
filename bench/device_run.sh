#!/usr/bin/env bash
# The pinned CPU benchmarks on the device machine (the `run` tool's 16-core GPU host), in one command:
#
#   OUT=/some/dir COMMIT=abc1234 bash bench/device_run.sh [STEP...]     STEP: peer flood cloud tls
#
# Steps, in the order given (default: peer flood cloud tls), each skipped when it would not end before
# DEADLINE_S seconds (default 570) after the start, each stopped with SIGINT (its servers stopped in
# its own finally blocks) if it overruns:
#   peer   python -m bench.cloud_peer: both servers on 2 cores, the client on the other physical cores
#   flood  python -m bench.flood: cloud on 2 cores, flooder and victim on cores of their own
#   cloud  python -m bench.cloud --device cpu, the whole benchmark on 2 cores (as cloud-cpu-pinned*.md)
#   tls    python -m bench.tls, the whole benchmark on 2 cores (servers and client share them, as tls.md)
#   agent  python -m bench.agent, the whole benchmark on 2 cores (agents, client, in-process reference)
#   scale-weak, scale-weak2  python -m bench.scale with minilm and --callers-per-replica 32: replicas of
#          one core (six agents) or two cores (four agents); minilm's edge model in .gpu/extra
#   scale  python -m bench.scale: 1, 2 and 4 replicas of one core each, six agents and six load
#          generators on cores of their own (digits: its edge model travels, minilm's does not fit)
#
# Carried beside the working tree (ignored by git): .whl/<group>/*.whl, Python 3.12 wheels of what the
# host lacks, and .gpu/packed, the models as `python -m bench.device_models pack` wrote them. The
# wheels go to /tmp/site, put first on every python3's path by a .pth file (the benchmarks start
# children with a PYTHONPATH of their own); the models are restored as FP32 to .gpu/models.
# Reports and device-log.txt go to $OUT. With the models (~40 MB packed), the wheels of MLServer's
# group and of trustme's (tls) do not fit one call's 64 MiB together: run tls in a call of its own,
# or in a second call on the still-warm host (installed groups are kept in /tmp/site).
set -u
cd "$(dirname "$0")/.."
START=$SECONDS
OUT=${OUT:-/tmp/device-out}
DEADLINE_S=${DEADLINE_S:-570}
COMMIT=${COMMIT:-unknown}
mkdir -p "$OUT"
LOG=$OUT/device-log.txt
if [ $# -gt 0 ]; then STEPS=("$@"); else STEPS=(peer flood cloud tls); fi
log() { echo "[$(date -u +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$LOG"; }

# ---------------------------------------------------------------------------------- the host
log "host: $(nproc) CPUs, $(python3 --version 2>&1), load $(cut -d' ' -f1-3 /proc/loadavg), code $COMMIT"
lscpu 2>/dev/null | grep -E '^(Model name|Thread|Core|Socket|NUMA node[0-9]* CPU)' >>"$LOG"
log "the host's own: $(python3 -m pip list 2>/dev/null | grep -iE '^(grpcio|protobuf|torch|numpy|typing.extensions|wrapt|ml.dtypes|onnxruntime) ' | tr -s ' ' | paste -sd, -)"
command -v taskset >/dev/null || { log "no taskset on this host"; exit 1; }

# ---------------------------------------------------------------------------------- wheels
for group in .whl/*/; do
    name=$(basename "$group")
    [ -f "/tmp/site/.installed-$name" ] && continue
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$group"*.whl >>"$LOG" 2>&1 || { log "pip install of .whl/$name failed"; exit 1; }
    touch "/tmp/site/.installed-$name"
    log "installed .whl/$name ($(ls "$group" | wc -l) wheels)"
done
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
echo "import sys; sys.path.insert(0, '/tmp/site')" >"$SITE/00-fogline-device-site.pth" ||
    { log "cannot write $SITE"; exit 1; }
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1

# ---------------------------------------------------------------------------------- models
python3 -m bench.device_models unpack .gpu/packed .gpu/models >>"$LOG" 2>&1 ||
    { log "restoring the models failed"; exit 1; }
log "models restored to .gpu/models (FP32 from FP16 where packed so)"
# Edge files carried on their own (.gpu/extra/NAME-VERSION-FILE.xz, e.g. minilm's INT8 model for the
# agents of the scale run): put back, with their size and hash in the manifest's file table.
for packed in .gpu/extra/*.xz; do
    [ -f "$packed" ] || continue
    python3 - "$packed" >>"$LOG" 2>&1 <<'EOF_EXTRA' || { log "restoring $packed failed"; exit 1; }
import hashlib, json, lzma, sys
from pathlib import Path
packed = Path(sys.argv[1])
name, version, file = packed.name[: -len(".xz")].split("-", 2)
target = Path(".gpu/models", name, version)
data = lzma.decompress(packed.read_bytes())
(target / file).write_bytes(data)
manifest = json.loads((target / "manifest.json").read_text())
manifest["files"][file] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
(target / "manifest.json").write_text(json.dumps(manifest, indent=2))
print(f"{name}/{version}/{file}: restored from {packed} ({len(data)} bytes)")
EOF_EXTRA
done

# ---------------------------------------------------------------------------------- cores
# Physical cores (sibling sets), lowest first; the first two stay free for the host's own work. The
# servers take the first thread of the next two, and their sibling threads stay idle; clients take
# whole physical cores after those.
read -r SERVER CLIENT FLOODER VICTIM < <(python3 - <<'EOF'
import os
cpus = sorted(os.sched_getaffinity(0))
def siblings(c):
    try:
        text = open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read().strip()
    except OSError:
        return (c,)
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return tuple(sorted(x for x in out if x in cpus))
cores = sorted({siblings(c) for c in cpus})
rest = cores[4:]
half = len(rest) // 2
fmt = lambda groups: ",".join(str(c) for g in groups for c in g)
print(f"{cores[2][0]},{cores[3][0]}", fmt(rest), fmt(rest[:half]), fmt(rest[half:]))
EOF
)
log "physical cores: $(for c in $(seq 0 $(($(nproc) - 1))); do cat /sys/devices/system/cpu/cpu$c/topology/thread_siblings_list 2>/dev/null; done | sort -un | paste -sd' ' -)"
log "servers on CPUs $SERVER, client on $CLIENT, flooder on $FLOODER, victim on $VICTIM"
[ -n "$VICTIM" ] || { log "could not lay out the cores"; exit 1; }

# ---------------------------------------------------------------------------------- checks
python3 -c 'import fogline.cli, fogline.cloud.server, grpc, google.protobuf, pydantic; print("fogline imports; grpcio", grpc.__version__, "protobuf", google.protobuf.__version__, "pydantic", pydantic.VERSION)' >>"$LOG" 2>&1 ||
    log "fogline does not import (see above)"
NOTE="device host ($(nproc)-CPU H200 machine), code $COMMIT, models carried as FP16 and restored to FP32"

# ---------------------------------------------------------------------------------- steps
step() {  # step NAME ESTIMATED_S COMMAND...
    local name=$1 estimate=$2 left
    shift 2
    left=$((DEADLINE_S - (SECONDS - START)))
    if [ "$left" -lt "$estimate" ]; then
        log "SKIP $name: ${left}s left, it needs about ${estimate}s"
        return
    fi
    log "START $name: $*"
    timeout -s INT -k 20 "$left" "$@" >>"$LOG" 2>&1
    log "END $name: rc=$?"
}

for s in "${STEPS[@]}"; do
    case $s in
    peer)
        # two processes: tritonclient's stubs and MLServer's register the same protobuf names
        if python3 -c 'import mlserver.cli.main, fogline.cloud.mlserver_runtime' >>"$LOG" 2>&1 &&
            python3 -c 'import tritonclient.grpc.aio' >>"$LOG" 2>&1; then
            step peer 240 taskset -c "$CLIENT" python3 -m bench.cloud_peer --models .gpu/models --runs 3 \
                --seconds 5 --warmup 1 --server-cpus "$SERVER" --client-cpus "$CLIENT" \
                --mlserver-python "$(command -v python3)" --note "$NOTE" --out "$OUT/cloud-peer-pinned.md"
        else
            log "SKIP peer: MLServer or tritonclient does not import (see above)"
        fi
        ;;
    peer-gpu)
        step peer-gpu 240 taskset -c "$CLIENT" python3 -m bench.cloud_peer --models .gpu/models --runs 3 \
            --seconds 5 --warmup 1 --server-cpus "$SERVER" --client-cpus "$CLIENT" --device cuda \
            --mlserver-python "$(command -v python3)" --note "$NOTE; both servers on the GPU" \
            --out "$OUT/cloud-peer-gpu.md"
        ;;
    flood)
        step flood 80 python3 -m bench.flood --models .gpu/models --rounds "${FLOOD_ROUNDS:-7}" --seconds 4 \
            --cloud-cpus "$SERVER" --flooder-cpus "$FLOODER" --victim-cpus "$VICTIM" --out "$OUT/flood-pinned.md"
        ;;
    cloud)
        step cloud 130 taskset -c "$SERVER" python3 -m bench.cloud --device cpu --models .gpu/models --rounds 3 \
            --note "$NOTE; pinned to 2 cores with taskset -c $SERVER" --out "$OUT/cloud-cpu-pinned-h200.md"
        ;;
    tls)
        if python3 -c 'import trustme' >>"$LOG" 2>&1; then
            step tls 110 taskset -c "$SERVER" python3 -m bench.tls --models .gpu/models --rounds 4 --seconds 5 \
                --out "$OUT/tls-pinned.md"
        else
            log "SKIP tls: trustme does not import (carry .whl/tls)"
        fi
        ;;
    agent)
        # the agent's added latency (issue 6's gate) on two quiet pinned cores: agents, client and the
        # in-process reference share them, as on the 2-core VM; needs only the edge files
        step agent 200 taskset -c "$SERVER" python3 -m bench.agent --models .gpu/models \
            --out "$OUT/agent-pinned.md" --json "$OUT/agent-pinned.json"
        ;;
    scale-minilm)
        step scale-minilm 330 python3 -m bench.scale --models .gpu/models --model minilm --replica-cpus 2 --agents 4 \
            --concurrency 32 --seconds 10 --warmup 3 --out "$OUT/scale-minilm.md"
        ;;
    scale-weak)
        # the offered load grows with the replicas (32 callers per replica over six agents): see bench/scale.py
        step scale-weak 240 python3 -m bench.scale --models .gpu/models --model minilm --replica-cpus 1 --agents 6 \
            --callers-per-replica 32 --seconds 10 --warmup 3 --out "$OUT/scale-weak-1core.md"
        ;;
    scale-weak2)
        step scale-weak2 240 python3 -m bench.scale --models .gpu/models --model minilm --replica-cpus 2 --agents 4 \
            --callers-per-replica 32 --seconds 10 --warmup 3 --out "$OUT/scale-weak-2core.md"
        ;;
    scale)
        step scale 300 python3 -m bench.scale --models .gpu/models --model digits --replica-cpus 1 --agents 6 \
            --concurrency 16 --seconds 10 --warmup 2 --out "$OUT/scale.md"
        ;;
    *) log "unknown step $s" ;;
    esac
done
log "done"
