#!/bin/sh
# Lays out the root file system of the imc-rs container image: the two binaries, exactly the
# shared libraries they load (as `ldd` lists them, the dynamic loader included), the CA bundle
# for https targets, a passwd/group naming the non-root user 65532, and an nsswitch.conf.
#
#   scripts/image-rootfs.sh BIN_DIR ROOTFS
#
# BINARIES (default "imc-dispatcher imc-control") names the programs; the container tests set it
# to imc-loadgen for their sink image.
#
# BIN_DIR holds imc-dispatcher and imc-control (target/release in the Dockerfile's build stage,
# target/debug in the container tests); ROOTFS must not exist yet. The Dockerfile's build stage
# and the tests both run this script, so the image they make holds the same files.
#
# Why glibc's shared libraries rather than a static binary: name resolution. A statically linked
# glibc getaddrinfo needs glibc's shared libraries at run time anyway (the linker says so), and the
# musl target is not part of the toolchain this project builds with. With the libraries carried,
# a subscriber named `event-display.default` resolves through the pod's /etc/resolv.conf (search
# domains, ndots:5) exactly as every glibc program in the cluster resolves it; the container tests
# prove it with a short name that resolves only through a search domain. glibc 2.34+ has its
# `files` and `dns` NSS back-ends inside libc.so.6, so nothing is dlopen'ed.
set -eu
bin_dir=$1
root=$2
[ ! -e "$root" ] || { echo "image-rootfs: $root exists" >&2; exit 1; }
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs"
binaries=${BINARIES:-imc-dispatcher imc-control}
for b in $binaries; do
    [ -x "$bin_dir/$b" ] || { echo "image-rootfs: $bin_dir/$b is missing; build it first" >&2; exit 1; }
    # Debug sections are dropped (symbols stay, so backtraces still name functions).
    objcopy --strip-debug "$bin_dir/$b" "$root/usr/local/bin/$b"
done
# Every library either binary loads, at the path the loader looks for it.
for lib in $(for b in $binaries; do ldd "$bin_dir/$b"; done \
        | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# The trust store https targets are checked against (the system roots of contract §6.5).
bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$bundle" ] || { echo "image-rootfs: no CA bundle at $bundle (install ca-certificates)" >&2; exit 1; }
cp -L "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
# /etc/hosts first, then DNS: what glibc does with the usual Debian file, written down so that a
# missing nsswitch.conf (glibc's built-in order differs) cannot change lookups.
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
