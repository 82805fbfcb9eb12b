#!/usr/bin/env bash
# Builds drover's workload image `drover/busybox:1` locally, with no registry:
# Debian's statically linked busybox in an otherwise empty root filesystem
# (≈ 2 MB), imported with `docker import`.
#
#   deploy/images/build.sh            build unless the image already exists
#   deploy/images/build.sh --force    rebuild even if it exists
#
# Needs a running Docker engine; installs Debian's `busybox-static` with
# apt-get when no static busybox is on the host. Exits non-zero with one
# sentence on stderr when it cannot build.
set -euo pipefail

image="${DROVER_BUSYBOX_IMAGE:-drover/busybox:1}"
force=0

die() {
  echo "error: $*" >&2
  exit 1
}

for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h | --help)
      sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown option $arg (usage: build.sh [--force])" ;;
  esac
done

command -v docker >/dev/null 2>&1 ||
  die "the docker command is not installed; install Docker to build $image"
if ! info_err="$(docker info 2>&1 >/dev/null)"; then
  reason="$(printf '%s\n' "$info_err" | grep -v '^$' | tail -n 1)"
  die "cannot reach the Docker engine (${reason:-docker info failed}); start Docker and retry"
fi

old_id="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
if [ "$force" -eq 0 ] && [ -n "$old_id" ]; then
  echo "$image already exists (use --force to rebuild)"
  exit 0
fi

# A busybox that runs in an empty rootfs must be statically linked.
is_static() {
  [ -x "$1" ] || return 1
  # `ldd` prints "not a dynamic executable" (and fails) for static binaries.
  ! ldd "$1" >/dev/null 2>&1
}

busybox=""
for candidate in "${BUSYBOX:-}" /bin/busybox /usr/bin/busybox; do
  if [ -n "$candidate" ] && is_static "$candidate"; then
    busybox="$candidate"
    break
  fi
done

if [ -z "$busybox" ]; then
  command -v apt-get >/dev/null 2>&1 ||
    die "no static busybox found and apt-get is missing; install a static busybox and set BUSYBOX=/path/to/it"
  echo "installing Debian's busybox-static with apt-get..."
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q busybox-static >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q busybox-static >/dev/null 2>&1 ||
      die "apt-get could not install busybox-static (are you root, and can apt reach Debian's mirrors?)"
  fi
  for candidate in /bin/busybox /usr/bin/busybox; do
    if is_static "$candidate"; then
      busybox="$candidate"
      break
    fi
  done
  [ -n "$busybox" ] || die "busybox-static was installed but no static /bin/busybox appeared"
fi

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root" "$rootfs/var/www"
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
# One symlink per applet, as busybox's own installer makes them.
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

echo "importing $image from $busybox ($("$busybox" --list | wc -l) applets)..."
tar -C "$rootfs" -c . |
  docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$image" >/dev/null ||
  die "docker import of $image failed"

docker run --rm "$image" true >/dev/null 2>&1 ||
  die "$image was imported but a container from it does not start"
# A rebuild leaves the previous image untagged: remove it unless in use.
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect --format '{{.Id}}' "$image")" ]; then
  docker rmi "$old_id" >/dev/null 2>&1 || true
fi
echo "built $image"
