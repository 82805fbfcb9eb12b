#!/usr/bin/env bash
# Builds the image `drover/drover:local` that deploy/compose.yaml runs, with no
# registry and no base image: drover-controller, drover-agent and droverctl
# (stripped), the shared libraries `ldd` lists for them, and a static busybox
# for the compose lab's one-shot PKI step, in an otherwise empty root
# filesystem imported with `docker import` (like build.sh does for busybox).
#
#   deploy/images/build-drover.sh                  cargo build --release, then build the image
#   deploy/images/build-drover.sh --bin-dir DIR    use the binaries already in DIR (no cargo)
#   deploy/images/build-drover.sh --tag IMAGE      another name (default drover/drover:local,
#                                                  or $DROVER_IMAGE)
#
# The image is rebuilt on every run (the binaries may have changed); the
# previous one with that name is removed unless a container uses it. Needs a
# running Docker engine and a static busybox (Debian's busybox-static, which
# build.sh installs). Exits non-zero with one sentence on stderr when it cannot
# build.
set -euo pipefail
cd "$(dirname "$0")/../.."

image="${DROVER_IMAGE:-drover/drover:local}"
bin_dir=""
binaries=(drover-controller drover-agent droverctl)

die() {
  echo "error: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --tag) image="${2:?--tag needs an image name}"; shift 2 ;;
    -h | --help)
      sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown option $1 (usage: build-drover.sh [--bin-dir DIR] [--tag IMAGE])" ;;
  esac
done

command -v docker >/dev/null 2>&1 ||
  die "the docker command is not installed; install Docker to build $image"
if ! info_err="$(docker info 2>&1 >/dev/null)"; then
  reason="$(printf '%s\n' "$info_err" | grep -v '^$' | tail -n 1)"
  die "cannot reach the Docker engine (${reason:-docker info failed}); start Docker and retry"
fi

if [ -z "$bin_dir" ]; then
  bin_dir="${CARGO_TARGET_DIR:-target}/release"
  echo "building release binaries (the first build takes a few minutes)..."
  cargo build --release --quiet -p drover-controller -p drover-agent -p drover-ctl ||
    die "cargo build --release failed (see above)"
fi
for b in "${binaries[@]}"; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing or not executable; build it (cargo build --release) or pass --bin-dir"
done

busybox=""
for candidate in "${BUSYBOX:-}" /bin/busybox /usr/bin/busybox; do
  # A busybox that runs in this rootfs must be statically linked (`ldd` fails on it).
  if [ -n "$candidate" ] && [ -x "$candidate" ] && ! ldd "$candidate" >/dev/null 2>&1; then
    busybox="$candidate"
    break
  fi
done
[ -n "$busybox" ] ||
  die "no static busybox found: run deploy/images/build.sh once (it installs busybox-static) or set BUSYBOX=/path/to/it"

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/usr/local/bin" "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root" \
  "$rootfs/var/lib/drover" "$rootfs/pki"
chmod 1777 "$rootfs/tmp"

for b in "${binaries[@]}"; do
  # Debug builds carry ~150 MB of DWARF each; the image needs none of it.
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$rootfs/usr/local/bin/$b" "$bin_dir/$b" ||
      die "strip could not copy $bin_dir/$b"
  else
    cp "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
  fi
  # Every library the dynamic loader needs, at the path ldd resolved it to
  # (the loader itself appears as a bare absolute path).
  ldd "$bin_dir/$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
    while read -r lib; do
      [ -e "$rootfs$lib" ] && continue
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
done

cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] && continue
  ln -sf busybox "$rootfs/bin/$applet"
done
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
# glibc ≥ 2.34 resolves host names (the compose service names) without NSS
# modules; this file only states the order.
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"

old_id="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
echo "importing $image ($(du -sh "$rootfs" | cut -f1) root filesystem from $bin_dir)..."
tar -C "$rootfs" -c . |
  docker import -c 'ENV PATH=/usr/local/bin:/bin' -c 'CMD ["drover-controller", "--help"]' - "$image" >/dev/null ||
  die "docker import of $image failed"

for b in "${binaries[@]}"; do
  docker run --rm "$image" "$b" --version >/dev/null 2>&1 ||
    die "$image was imported but $b does not run in it (a shared library missing?)"
done
new_id="$(docker image inspect --format '{{.Id}}' "$image")"
# A rebuild leaves the previous image untagged: remove it unless in use.
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker rmi "$old_id" >/dev/null 2>&1 || true
fi
echo "built $image"
