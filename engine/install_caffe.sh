#!/usr/bin/env bash
# Builds BVLC Caffe (the brocolli-caffe 9.0.2 source tree) with pycaffe into a
# versioned prefix outside the repository, so that every clone shares one build.
#
#   engine/install_caffe.sh                 install the CPU build if missing
#   engine/install_caffe.sh --print-prefix  print where the build lives (or will)
#   engine/install_caffe.sh --check         exit 0 when installed, 1 otherwise
#
# Environment:
#   HINTKD_CACHE          where builds go (default ~/.cache/hintkd)
#   HINTKD_CAFFE_SDIST    a local brocolli-caffe-9.0.2.tar.gz (skips the download)
#   HINTKD_JOBS           parallel make jobs (default: number of cores)
#
# The prefix name carries a hash of the recipe (Makefile.config, patches/, the
# pinned source, the variant, BUILD_RECIPE), so a changed recipe builds anew and never overwrites an
# older build. A build is assembled in a temporary folder and renamed into place
# only after its smoke test passes: an interrupted build never looks installed.
set -euo pipefail

ENGINE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CAFFE_SDIST_NAME=brocolli-caffe
CAFFE_SDIST_VERSION=9.0.2
CAFFE_SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a
# Extra layers of this source tree that BVLC lacks and the paper does not need;
# several have no GPU code, so both builds leave them out (caffe-facts.md).
EXTRA_LAYERS="relu6 hardswish hardsigmoid pixelshuffle maxunpool upsample proposal"

# Bump when a build step below changes what is built (the hash then changes).
BUILD_RECIPE=2

# Debian packages: the Caffe build, then what the project's Python needs at run time.
BUILD_PACKAGES="build-essential dpkg-dev python3-pip libboost-system-dev libboost-thread-dev
  libboost-filesystem-dev libboost-regex-dev libboost-python-dev libprotobuf-dev
  protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev liblmdb-dev
  libopenblas-dev python3-dev"
RUNTIME_PACKAGES="python3 python3-numpy python3-protobuf python3-skimage python3-scipy
  python3-lmdb python3-six python3-jinja2 python3-matplotlib python3-sklearn python3-pytest"

variant=cpu
action=install
for arg in "$@"; do
  case "$arg" in
    --print-prefix) action=print ;;
    --check) action=check ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install_caffe.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

cache=${HINTKD_CACHE:-$HOME/.cache/hintkd}
recipe_hash=$(cat "$ENGINE_DIR/Makefile.config" "$ENGINE_DIR"/patches/*.patch <(echo "$CAFFE_SDIST_NAME $CAFFE_SDIST_VERSION \
  $CAFFE_SDIST_SHA256 $variant $EXTRA_LAYERS $BUILD_RECIPE") | sha256sum | cut -c1-10)
prefix="$cache/caffe-$CAFFE_SDIST_VERSION-$variant-$recipe_hash"

case "$action" in
  print) echo "$prefix"; exit 0 ;;
  check) [ -f "$prefix/BUILD-INFO.json" ]; exit $? ;;
esac

say() { echo "[install_caffe] $*" >&2; }

install_debian_packages() {
  local missing=() pkg
  for pkg in $BUILD_PACKAGES $RUNTIME_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      say "missing Debian packages and no root or sudo to install them:"
      say "  apt-get install ${missing[*]}"
      exit 1
    fi
  fi
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

fetch_source() {
  local sdist="$cache/src/$CAFFE_SDIST_NAME-$CAFFE_SDIST_VERSION.tar.gz"
  if [ -n "${HINTKD_CAFFE_SDIST:-}" ]; then
    sdist=$HINTKD_CAFFE_SDIST
  elif [ ! -f "$sdist" ]; then
    say "downloading the $CAFFE_SDIST_NAME==$CAFFE_SDIST_VERSION source distribution"
    local dl; dl=$(mktemp -d "$cache/src/download.XXXXXX")
    # Only the sdist's metadata step runs; its conda-bound setup.py is never installed.
    python3 -m pip download -q --no-deps --no-binary :all: \
      "$CAFFE_SDIST_NAME==$CAFFE_SDIST_VERSION" -d "$dl" >&2
    mv "$dl/$CAFFE_SDIST_NAME-$CAFFE_SDIST_VERSION.tar.gz" "$sdist"
    rm -rf "$dl"
  fi
  if ! echo "$CAFFE_SDIST_SHA256  $sdist" | sha256sum -c --status; then
    say "checksum mismatch for $sdist (expected sha256 $CAFFE_SDIST_SHA256)"
    exit 1
  fi
  echo "$sdist"
}

build() {
  local sdist=$1 work=$2
  tar xzf "$sdist" -C "$work"
  local tree="$work/$CAFFE_SDIST_NAME-$CAFFE_SDIST_VERSION" layer
  for layer in $EXTRA_LAYERS; do
    rm -f "$tree/src/caffe/layers/${layer}_layer."{cpp,cu} "$tree/include/caffe/layers/${layer}_layer.hpp"
  done
  local patch
  for patch in "$ENGINE_DIR"/patches/*.patch; do  # fixes to the source, each explained inside
    patch -s -d "$tree" -p1 < "$patch"
  done
  cp "$ENGINE_DIR/Makefile.config" "$tree/Makefile.config"
  local jobs=${HINTKD_JOBS:-$(nproc)} log="$work/build.log" total
  # Compile steps, one link step per tool, and the library, pycaffe and proto steps.
  total=$(( $(find "$tree/src/caffe" "$tree/tools" -name '*.cpp' ! -name 'test_*' | wc -l)
            + $(find "$tree/tools" -maxdepth 1 -name '*.cpp' | wc -l) + 4 ))
  say "building Caffe ($variant) with $jobs jobs; full log: $log"
  # Progress: one counter line over the compile steps make reports.
  local status=0
  make -C "$tree" -j"$jobs" all pycaffe CPU_ONLY=1 2>&1 | tee "$log" |
    awk -v total="$total" '/^(CXX|NVCC|LD|AR|PROTOC)/ { n++; printf "\r[install_caffe] %d/~%d build steps", n, total > "/dev/stderr"; fflush("/dev/stderr") }
                           END { print "" > "/dev/stderr" }' || status=$?
  if [ "$status" -ne 0 ]; then
    say "Caffe build failed; the last lines of $log:"
    tail -n 30 "$log" >&2
    exit 1
  fi
}

assemble() {
  local work=$1 stage=$2
  local tree="$work/$CAFFE_SDIST_NAME-$CAFFE_SDIST_VERSION" out
  out=$(ls -d "$tree"/.*_release | head -n 1)
  mkdir -p "$stage/bin" "$stage/lib" "$stage/build"
  cp -a "$out/lib/." "$stage/lib/"
  cp "$out/tools/caffe.bin" "$stage/bin/caffe"
  cp -a "$tree/python" "$stage/python"
  # _caffe.so looks for libcaffe in $ORIGIN/../../build/lib, caffe.bin in $ORIGIN/../lib.
  ln -s ../lib "$stage/build/lib"
  cp "$ENGINE_DIR/Makefile.config" "$stage/Makefile.config"
  "$stage/bin/caffe" --version >&2
  /usr/bin/python3 -c "import sys; sys.path.insert(0, '$stage/python'); import caffe; print('pycaffe', caffe.__version__)" >&2
  cat > "$stage/BUILD-INFO.json" <<JSON
{"source": "$CAFFE_SDIST_NAME==$CAFFE_SDIST_VERSION", "sha256": "$CAFFE_SDIST_SHA256",
 "variant": "$variant", "recipe": "$recipe_hash", "python": "/usr/bin/python3",
 "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
JSON
}

install_debian_packages
mkdir -p "$cache/src"
exec 9>"$cache/install.lock"
flock 9   # a second installer waits here, then finds the finished build
if [ -f "$prefix/BUILD-INFO.json" ]; then
  echo "$prefix"
  exit 0
fi
rm -rf "$prefix" "$prefix".tmp.* "$cache"/build.*   # leftovers of interrupted builds
started=$(date +%s)
sdist=$(fetch_source)
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work" "$prefix.tmp.$$"' EXIT
build "$sdist" "$work"
assemble "$work" "$prefix.tmp.$$"
mv "$prefix.tmp.$$" "$prefix"
say "installed Caffe in $prefix ($(( $(date +%s) - started )) s)"
echo "$prefix"
