#!/bin/bash
# Run a command inside the restrictions deploy/systemd/fogline-agent.service puts on the agent, rebuilt
# by hand where systemd is not PID 1 (containers, CI). Needs root; run it through
#   unshare -m --propagation private tests/e2e/agent_sandbox.sh PROC_OPTIONS MODELS FLEET -- CMD...
# so every mount below lives and dies with this process's own mount namespace.
#
#   PROC_OPTIONS  mount options for the new /proc: "hidepid=invisible" is ProtectProc=invisible,
#                 add ",subset=pid" for ProcSubset=pid (hides /proc/stat, /proc/cpuinfo, /proc/meminfo)
#   MODELS        a model repository, bound read-only at /var/lib/private/fogline/models
#   FLEET         the fleet file, copied to /var/lib/.sandbox-etc/fogline/fleet.yaml (read-only)
#
# What it rebuilds, and how close it gets:
#   ProtectProc=/ProcSubset=  a fresh procfs with PROC_OPTIONS
#   DynamicUser=yes           uid/gid 65534, no supplementary groups, no capabilities, no new privileges
#   StateDirectory=fogline    /var/lib/private/fogline owned by that user, reached through the
#                             /var/lib/fogline -> private/fogline symlink (a tmpfs hides the host's /var/lib)
#   ProtectSystem=strict      every other mount read-only (/proc, /sys, /dev apart, as systemd does)
#   PrivateTmp=yes            fresh tmpfs on /tmp and /var/tmp; SANDBOX_KEEP (paths separated by ':',
#                             e.g. a checkout and its virtual environment) stay visible, read-only, when
#                             they live under /tmp or /var/tmp (CI may clone there)
#   PrivateDevices=yes        a /dev holding only null, zero, full, random, urandom, tty and shm
#   UMask=0027
# Not rebuilt: the seccomp filter, RestrictAddressFamilies, ProtectHome (the test interpreter may live
# under /root), the cgroup limits.
set -euo pipefail

[ "$#" -ge 5 ] && [ "$4" = "--" ] || { echo "usage: $0 PROC_OPTIONS MODELS FLEET -- CMD..." >&2; exit 2; }
proc_options=$1 models=$(realpath "$2") fleet=$(realpath "$3")
shift 4

mount --make-rprivate /   # belt and braces: nothing below may reach the host's mount table

mount -n -t proc -o "$proc_options" proc /proc

mount -n -t tmpfs -o mode=0755 tmpfs /var/lib
mkdir -p /var/lib/private/fogline/models /var/lib/.sandbox-etc/fogline /var/lib/.sandbox-dev
ln -s private/fogline /var/lib/fogline
chown 65534:65534 /var/lib/private/fogline
chmod 0750 /var/lib/private/fogline   # StateDirectoryMode=0750
cp "$fleet" /var/lib/.sandbox-etc/fogline/fleet.yaml
mount -n --bind /var/lib/private/fogline /var/lib/private/fogline   # its own mount: stays writable
mount -n --bind "$models" /var/lib/private/fogline/models

devices="null zero full random urandom tty"
for name in $devices; do
    touch "/var/lib/.sandbox-dev/$name"
    mount -n --bind "/dev/$name" "/var/lib/.sandbox-dev/$name"
done

# Paths the command needs that the private /tmp and /var/tmp would hide: parked here, moved back later.
kept=()
IFS=: read -r -a keep <<<"${SANDBOX_KEEP:-}"
for path in "${keep[@]}"; do
    [ -n "$path" ] && [ -d "$path" ] || continue
    path=$(realpath "$path")
    case "$path" in /tmp/*|/var/tmp/*) ;; *) continue ;; esac
    park="/var/lib/.sandbox-keep/${#kept[@]}"
    mkdir -p "$park"
    mount -n --bind "$path" "$park"
    kept+=("$path")
done

# ProtectSystem=strict. "remount,bind,ro" changes this namespace's copy of each mount, never the
# file system itself ("remount,ro" without bind would).
findmnt -rno TARGET | while read -r target; do
    case "$target" in
        /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/var/lib/private/fogline) continue ;;
        *\\*) continue ;;   # an escaped odd name: leave it
    esac
    mount -n -o remount,bind,ro "$target" 2>/dev/null || true
done

mount -n -t tmpfs -o mode=1777 tmpfs /tmp
mount -n -t tmpfs -o mode=1777 tmpfs /var/tmp
for i in "${!kept[@]}"; do
    mkdir -p "${kept[$i]}"
    mount -n --move "/var/lib/.sandbox-keep/$i" "${kept[$i]}"
done

mount -n -t tmpfs -o mode=0755,nosuid tmpfs /dev
for name in $devices; do
    touch "/dev/$name"
    mount -n --move "/var/lib/.sandbox-dev/$name" "/dev/$name"
done
mkdir -m 1777 /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr

umask 0027
cd /
exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all \
    --no-new-privs -- "$@"
