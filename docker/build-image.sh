#!/usr/bin/env bash
# Builds the `phxsql:local` image without any image registry:
#
#   1. `phxsql-base:<codename>` (once, then reused): a Debian root file system
#      made with debootstrap from THIS machine's apt mirror (read from its apt
#      sources, never hard-coded), with mariadb-server, mariadb-client and
#      mariadb-backup installed, turned into an image with `docker import`.
#   2. `phxsql:local`: that base plus our binaries (from BIN_DIR, default
#      target/release) and the entrypoint (docker/Dockerfile).
#
#   docker/build-image.sh [BIN_DIR]
#   PHXSQL_REBUILD_BASE=1 docker/build-image.sh    # make the base again
#
# Needs root (debootstrap, chroot) and the binaries built for this machine
# (cargo build --release --bins): the image's Debian release is this host's,
# so they run there as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=${1:-target/release}
for b in phxbinlogsvr phxsqlproxy phxctl; do
    if [ ! -x "$bin_dir/$b" ]; then
        echo "$bin_dir/$b is missing: cargo build --release --bins" >&2
        exit 1
    fi
done

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
base="phxsql-base:$codename"

# The Debian mirror this machine's apt uses for $codename itself (not
# -security or -updates): one-line .list files, then deb822 .sources files.
mirror() {
    local m
    m=$(awk -v c="$codename" '$1 == "deb" && $3 == c { print $2; exit }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
    if [ -z "$m" ]; then
        m=$(awk -v c="$codename" 'BEGIN { RS = "" } {
                uri = ""; ok = 0; n = split($0, line, "\n")
                for (i = 1; i <= n; i++) {
                    if (line[i] ~ /^URIs:/) { split(line[i], a, " "); uri = a[2] }
                    if (line[i] ~ /^Suites:/) { k = split(line[i], s, " "); for (j = 2; j <= k; j++) if (s[j] == c) ok = 1 }
                }
                if (ok && uri != "") { print uri; exit }
            }' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    fi
    if [ -z "$m" ]; then
        echo "no apt source for $codename in /etc/apt/sources.list{,.d/*}" >&2
        return 1
    fi
    echo "$m"
}

if [ -n "${PHXSQL_REBUILD_BASE:-}" ] || ! docker image inspect "$base" >/dev/null 2>&1; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        echo "Installing debootstrap ..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap
    fi
    url=$(mirror)
    rootfs=$(mktemp -d /tmp/phxsql-rootfs.XXXXXX)
    cleanup() {
        umount "$rootfs/proc" 2>/dev/null || true
        rm -rf "$rootfs"
    }
    trap cleanup EXIT
    echo "debootstrap $codename from $url into $rootfs (a few minutes) ..."
    debootstrap --variant=minbase "$codename" "$rootfs" "$url"
    # Packages must not try to start services inside the build.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod +x "$rootfs/usr/sbin/policy-rc.d"
    mount -t proc proc "$rootfs/proc"
    echo "installing MariaDB into the root file system ..."
    chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        mariadb-server mariadb-client mariadb-backup procps
    umount "$rootfs/proc"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/lib/mysql/* "$rootfs/usr/sbin/policy-rc.d"
    echo "docker import -> $base ..."
    tar -C "$rootfs" -c . | docker import - "$base"
fi

ctx=$(mktemp -d /tmp/phxsql-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$bin_dir"/phxbinlogsvr "$bin_dir"/phxsqlproxy "$bin_dir"/phxctl "$ctx"/
cp docker/entrypoint.sh docker/cluster.yaml "$ctx"/
sed "s/@BASE@/$base/" docker/Dockerfile >"$ctx/Dockerfile"
docker build -q -t phxsql:local "$ctx"
echo "built phxsql:local (base $base)"
