#!/usr/bin/env bash
# Builds the hintkd images from the Dockerfile: hintkd:gpu (the CUDA build, and the
# fast CPU build for runs without --gpu) and hintkd:cpu (the fast CPU build alone).
#
#   engine/build_images.sh [--target cpu|gpu|all] [--oci-archive DIR] [--reuse-builds]
#
#   --target T          which image (default: all, the CPU image first)
#   --oci-archive DIR   also write each image as DIR/hintkd-T.oci.tar, the file that
#                       `apptainer build hintkd-T.sif oci-archive://DIR/hintkd-T.oci.tar` reads
#   --reuse-builds      hand this machine's finished CUDA build of the same recipe
#                       (install_caffe.sh's cache) to the image build instead of compiling
#                       it again (CI, which has just built and tested it)
#
# With `docker build` where a Docker engine answers, else with buildah (chroot
# isolation, no daemon; installed from Debian's packages when missing and root). When
# no image registry answers, the debian:12 base that FROM names is first made from
# Debian's packages (debootstrap) and stored under that name. Nothing inside the build
# downloads from PyPI: the pinned Caffe source is fetched and checked here first and
# handed in through engine/build-inputs/ (a finished CUDA build through engine/prebuilt/),
# emptied again afterwards.
#
# Environment: HINTKD_IMAGE_TOOL=docker|buildah chooses the tool; HINTKD_CACHE as for
# install_caffe.sh.
set -euo pipefail

ENGINE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$ENGINE_DIR")
INPUTS="$ENGINE_DIR/build-inputs" PREBUILT="$ENGINE_DIR/prebuilt"
BASE=docker.io/library/debian:12
# The base's Debian release and the package sources it is made from (the host's, when
# it is Debian 12: the mirror this machine reaches).
SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian

say() { echo "[images] $*" >&2; }
# What this script made and must not leave behind, removed however it ends: the base's
# root folder, and whatever it handed in to the build context.
base_root=""
empty_handed_in() { find "$INPUTS" "$PREBUILT" -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +; }
trap '[ -z "$base_root" ] || as_root rm -rf "$base_root"; empty_handed_in' EXIT
fail() { say "error: $*"; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }

targets=(cpu gpu) oci_dir="" reuse=0
while [ $# -gt 0 ]; do
  case "$1" in
    --target)
      case "${2:-}" in cpu|gpu) targets=("$2") ;; all) targets=(cpu gpu) ;;
        *) fail "--target takes cpu, gpu or all, got '${2:-}'" ;; esac
      shift ;;
    --oci-archive) [ -n "${2:-}" ] || fail "--oci-archive needs a folder"; oci_dir=$2; shift ;;
    --reuse-builds) reuse=1 ;;
    -h|--help) usage ;;
    *) fail "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else fail "needs root (or sudo) for: $*"
  fi
}

apt_install() {
  command -v apt-get >/dev/null || fail "$* missing, and this is no Debian machine to install it on"
  say "installing $* from Debian's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

choose_tool() {
  case "${HINTKD_IMAGE_TOOL:-}" in
    docker|buildah) echo "$HINTKD_IMAGE_TOOL"; return ;;
    "") ;;
    *) fail "HINTKD_IMAGE_TOOL must be docker or buildah, got '$HINTKD_IMAGE_TOOL'" ;;
  esac
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  command -v buildah >/dev/null || apt_install buildah >&2
  command -v buildah >/dev/null || fail "neither a Docker engine nor buildah can be had here"
  echo buildah
}

image_exists() {
  if [ "$tool" = docker ]; then docker image inspect "$1" >/dev/null 2>&1
  else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

# debian:12 from a registry, else from Debian's packages under the same name.
ensure_base() {
  image_exists "$BASE" && return
  say "pulling $BASE"
  if timeout 120 "$tool" pull -q "$BASE" >/dev/null 2>&1; then return; fi
  say "no image registry answered: making $BASE from Debian's packages (debootstrap $SUITE)"
  command -v debootstrap >/dev/null || apt_install debootstrap
  local root started; root=$(mktemp -d /tmp/hintkd-base.XXXXXX) started=$(date +%s)
  base_root=$root
  as_root debootstrap --variant=minbase "$SUITE" "$root" "$DEBIAN_MIRROR" >/dev/null
  # The host's package sources when it runs the same release (its mirror is the one reached).
  if grep -qs "$SUITE" /etc/apt/sources.list.d/debian.sources; then
    rm -f "$root/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/debian.sources"
  fi
  as_root rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  if [ "$tool" = docker ]; then tar -C "$root" -c . | docker import - "$BASE" >/dev/null
  else
    command -v podman >/dev/null || apt_install podman
    tar -C "$root" -c . | podman import - "$BASE" >/dev/null
  fi
  say "made $BASE in $(( $(date +%s) - started )) s"
}

# The pinned Caffe source (and with --reuse-builds this machine's finished CUDA build of
# the image's recipe) into the build context; removed again however the script ends.
hand_in_inputs() {
  empty_handed_in
  local sdist; sdist=$("$ENGINE_DIR/install_caffe.sh" --fetch-source)
  cp "$sdist" "$INPUTS/"
  [ "$reuse" = 1 ] || return 0
  # The image's recipe: the CUDA build of Debian's toolkit. (The CPU build is compiled in
  # its own stage, which sees only build-inputs/, so that its layers stay cached.)
  local prefix
  prefix=$(env -u CUDA_HOME PATH=/usr/sbin:/usr/bin:/sbin:/bin "$ENGINE_DIR/install_caffe.sh" --cuda --print-prefix)
  if [ -f "$prefix/BUILD-INFO.json" ]; then
    say "handing in $prefix (same recipe as the image's; not compiled again)"
    cp -al "$prefix" "$PREBUILT/" 2>/dev/null || cp -a "$prefix" "$PREBUILT/"
  fi
}

build() {
  local target=$1 started; started=$(date +%s)
  say "building hintkd:$target with $tool (target '$target' of the Dockerfile)"
  if [ "$tool" = docker ]; then
    docker build --target "$target" -t "hintkd:$target" "$ROOT"
  else
    buildah bud --isolation chroot --network host --pull=never --layers \
      --target "$target" -t "hintkd:$target" "$ROOT"
  fi
  say "built hintkd:$target in $(( $(date +%s) - started )) s, $(image_size "hintkd:$target")"
}

image_size() {
  if [ "$tool" = docker ]; then
    docker image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.2f GB", $1 / 1e9 }'
  else buildah images --format '{{.Size}}' "$1"; fi
}

save_oci() {
  local target=$1 file="$oci_dir/hintkd-$target.oci.tar"
  mkdir -p "$oci_dir"
  rm -f "$file" "$file.part"
  if [ "$tool" = docker ]; then
    docker save -o "$file.part" "hintkd:$target"  # a docker-archive; apptainer reads it as docker-archive://
  else
    buildah push -q "hintkd:$target" "oci-archive:$file.part:hintkd:$target" >/dev/null
  fi
  mv "$file.part" "$file"
  say "wrote $file ($(du -h "$file" | cut -f1))"
}

tool=$(choose_tool)
say "image tool: $tool"
ensure_base
hand_in_inputs
for target in "${targets[@]}"; do
  build "$target"
  [ -z "$oci_dir" ] || save_oci "$target"
done
