#!/usr/bin/env bash
# Builds BVLC Caffe (the brocolli-caffe 9.0.2 source tree) with pycaffe into a
# versioned prefix outside the repository, so that every clone shares one build.
#
#   engine/install_caffe.sh                 install the fast CPU build if missing
#   engine/install_caffe.sh --stock         install the stock CPU build (BVLC's own CPU
#                                           code at -O2) if missing
#   engine/install_caffe.sh --cuda          install the CUDA build if missing
#   engine/install_caffe.sh --print-prefix  print where the build lives (or will)
#   engine/install_caffe.sh --print-cpu-id  print the hash of this CPU's model and flags that
#                                           a fast build's prefix carries
#   engine/install_caffe.sh --check         exit 0 when installed, 1 otherwise
#   engine/install_caffe.sh --runtime       only the Debian packages a build needs to run
#                                           (an image that copies the build in)
#   engine/install_caffe.sh --fetch-source  download and check the pinned source; print its path
#   engine/install_caffe.sh --fetch-onednn3 download and check the pinned oneDNN 3.2 (headers and
#                                           library, into HINTKD_CACHE); print its folder
#
# Environment:
#   HINTKD_CAFFE_VARIANT  cpu (fast), stock or cuda: the variant when no --cpu,
#                         --stock or --cuda is given
#   HINTKD_PORTABLE       1: the fast CPU build without -march=native, for a prefix
#                         that machines with other CPUs load (shared cluster storage)
#   HINTKD_ONEDNN         the fast CPU build's oneDNN: 2.6 (default, Debian's libdnnl-dev)
#                         or 3.2 (PyPI's onednn-cpu-gomp, pinned by sha256, with
#                         patches/onednn3/ for its API; slower here, docs/measured.md)
#   HINTKD_CACHE          where builds go (default ~/.cache/hintkd)
#   HINTKD_CAFFE_SDIST    a local brocolli-caffe-9.0.2.tar.gz (skips the download)
#   HINTKD_JOBS           parallel make jobs (default: number of cores)
#   HINTKD_CUDA_ARCH      CUDA: SM versions to compile for (default "70 75 80 86 90");
#                         the last also gets PTX, for GPUs newer than the list
#   CUDA_HOME             CUDA: a complete toolkit (nvcc, cuBLAS, cuRAND) to use; else
#                         the one on PATH if complete; else Debian's non-free
#                         nvidia-cuda-toolkit 11.8, installed by this script
#
# An image build's context (engine/build_images.sh fills both, git keeps them empty):
# the pinned source in engine/build-inputs/ is used before any download, and a finished
# build in engine/prebuilt/ whose folder name is this recipe's prefix name is installed
# as it is instead of compiling (the same recipe hash: the same build).
#
# The fast CPU build adds patches/fast/ (oneDNN convolutions and GEMMs, OpenMP
# threaded layers) and Makefile.fast.config, at -O3 for this machine's CPU.
#
# The prefix name carries the variant and a hash of the recipe (Makefile.config,
# patches/, the pinned source, the variant, the CUDA toolkit and architectures,
# the fast build's patches, flags, target CPU and oneDNN, BUILD_RECIPE), so a changed
# recipe builds anew and the builds never overwrite each other. A build is assembled in a temporary folder and renamed
# into place only after its smoke test passes: an interrupted build never looks
# installed.
set -euo pipefail

ENGINE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD_INPUTS="$ENGINE_DIR/build-inputs"
PREBUILT="$ENGINE_DIR/prebuilt"
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
# The shared libraries a finished build loads (ldd of libcaffe, _caffe.so, caffe),
# for a machine or image that runs a build made elsewhere (--runtime).
RUNTIME_LIBRARIES="libboost-filesystem1.74.0 libboost-python1.74.0 libboost-thread1.74.0
  libboost-regex1.74.0 libboost-system1.74.0 libgflags2.2 libgoogle-glog0v6 libhdf5-103-1
  libhdf5-hl-100 liblmdb0 libopenblas0-pthread libprotobuf32 libpython3.11"
CUDA_RUNTIME_LIBRARIES="libcudart11.0 libcublas11 libcublaslt11 libcurand10"
# The fast CPU build: oneDNN 2.6 (its OpenMP flavour, libgomp).
FAST_BUILD_PACKAGES="libdnnl-dev"
FAST_RUNTIME_LIBRARIES="libdnnl2 libgomp1"
# Or oneDNN 3.2 (HINTKD_ONEDNN=3.2): PyPI's build with GNU OpenMP, the same runtime,
# its library and -devel headers; the library goes into the prefix.
ONEDNN3_VERSION=2023.2.0
ONEDNN3_WHEELS="onednn-cpu-gomp=2f22a54d6a890ed14bfa185d42a4be65d8b5b1df85dc1f0f3a9abe31620416fb
  onednn-devel-cpu-gomp=9763c69e8c907e119056bd52ad918ca84ac9ba939d130a99dfa95ccca3e5e284"

# Progress over the build steps make reports (its output on stdin): one rewritten
# line on a terminal, a line every tenth of the way in a log or pipe; the count
# never passes the total (an estimate, raised when make does more).
build_progress() {
  local tty=0
  [ -t 2 ] && tty=1
  awk -v total="$1" -v tty="$tty" '
    /^(CXX|NVCC|LD|AR|PROTOC)/ {
      n++; if (n > total) total = n
      if (tty) { printf "\r[install_caffe] %d/%d build steps", n, total > "/dev/stderr"; fflush("/dev/stderr") }
      else if (int(10 * n / total) > int(10 * (n - 1) / total)) print "[install_caffe] " n "/" total " build steps" > "/dev/stderr"
    }
    END { if (tty) print "" > "/dev/stderr"; print "[install_caffe] " n "/" n " build steps done" > "/dev/stderr" }'
}

variant=${HINTKD_CAFFE_VARIANT:-cpu}
action=install
for arg in "$@"; do
  case "$arg" in
    --cpu) variant=cpu ;;
    --cuda) variant=cuda ;;
    --print-prefix) action=print ;;
    --print-cpu-id) action=print-cpu-id ;;
    --runtime) action=runtime ;;
    --check) action=check ;;
    --stock) variant=stock ;;
    --progress-filter=*) build_progress "${arg#*=}"; exit ;;  # the build's progress on stdin, for tests
    --fetch-source) action=fetch ;;
    --fetch-onednn3) action=fetch-onednn3 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    *) echo "install_caffe.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

case "$variant" in
  cpu|stock|cuda) ;;
  *) echo "install_caffe.sh: HINTKD_CAFFE_VARIANT must be cpu, stock or cuda, got '$variant'" >&2; exit 2 ;;
esac
onednn=${HINTKD_ONEDNN:-2.6}
case "$onednn" in
  2.6|3.2) [ "$variant" = cpu ] || onednn=none ;;  # only the fast CPU build uses oneDNN
  *) echo "install_caffe.sh: HINTKD_ONEDNN must be 2.6 (Debian's) or 3.2 (PyPI's), got '$onednn'" >&2; exit 2 ;;
esac

say() { echo "[install_caffe] $*" >&2; }

# --- CUDA: which toolkit, which code -------------------------------------------
# Debian 12's non-free nvidia-cuda-toolkit keeps nvcc here; its headers and
# libraries sit on the default paths (CUDA_DIR := /usr breaks libstdc++'s
# #include_next, caffe-facts.md).
DEBIAN_CUDA_DIR=/usr/lib/nvidia-cuda-toolkit
DEBIAN_CUDA_PACKAGES="nvidia-cuda-toolkit nvidia-cuda-dev"
CUDA_ARCH_LIST=${HINTKD_CUDA_ARCH:-70 75 80 86 90}

# A toolkit counts only with cuBLAS and cuRAND beside nvcc (a bare nvcc does
# not build Caffe), and below CUDA 13, which removed the cudaDeviceProp fields
# Caffe's DeviceQuery reads. Prints the directory, or fails with the reason.
complete_cuda() {
  local dir=$1 lib version
  [ -x "$dir/bin/nvcc" ] || { echo "no $dir/bin/nvcc"; return 1; }
  for header in cublas_v2.h curand.h; do
    [ -f "$dir/include/$header" ] || { echo "$dir has nvcc but no $header (cuBLAS/cuRAND missing)"; return 1; }
  done
  for lib in cublas curand; do
    compgen -G "$dir/lib64/lib$lib.so*" >/dev/null || compgen -G "$dir/lib/lib$lib.so*" >/dev/null ||
      { echo "$dir has nvcc but no lib$lib"; return 1; }
  done
  version=$("$dir/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1.\2/p')
  [ "${version%%.*}" -lt 13 ] 2>/dev/null ||
    { echo "$dir has CUDA $version; Caffe's DeviceQuery needs CUDA 12 or older"; return 1; }
  echo "$dir"
}

# CUDA_HOME, then the nvcc on PATH, then Debian's toolkit (installed if missing).
choose_cuda() {
  local candidates=() dir reason
  [ -n "${CUDA_HOME:-}" ] && candidates+=("$CUDA_HOME")
  command -v nvcc >/dev/null && candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")")
  for dir in "${candidates[@]}"; do
    case "$dir" in /usr|"$DEBIAN_CUDA_DIR") continue ;; esac  # Debian's own: chosen below
    if reason=$(complete_cuda "$dir"); then echo "$reason"; return; fi
    say "not using the CUDA toolkit at $dir: $reason" >&2
  done
  echo "$DEBIAN_CUDA_DIR"
}

cuda_arch_flags() {
  local sm flags="" last
  for sm in $CUDA_ARCH_LIST; do
    [[ $sm =~ ^[0-9]+$ ]] || { say "HINTKD_CUDA_ARCH: '$sm' is not an SM version like 86"; exit 2; }
    flags+=" -gencode arch=compute_$sm,code=sm_$sm"; last=$sm
  done
  [ -n "$flags" ] || { say "HINTKD_CUDA_ARCH is empty"; exit 2; }
  echo "${flags# } -gencode arch=compute_$last,code=compute_$last"
}

# --- Fast CPU build: flags and what its build depends on -------------------------
# The CPU a -march=native build is made for: its model name and flags, hashed.
cpu_id() { grep -m2 -E '^(model name|flags)' /proc/cpuinfo | sha256sum | cut -c1-16; }
[ "$action" != print-cpu-id ] || { cpu_id; exit 0; }
fast_recipe=""
if [ "$variant" = cpu ]; then
  if [ "${HINTKD_PORTABLE:-0}" = 1 ]; then
    optimization="-O3" target_cpu=portable
  else
    # -march=native: the CPU this machine reports; the prefix's hash carries it,
    # so a machine with another CPU builds its own instead of loading this one.
    optimization="-O3 -march=native"
    target_cpu=$(cpu_id)
  fi
  fast_recipe="fast $optimization $target_cpu $(cat "$ENGINE_DIR/Makefile.fast.config" "$ENGINE_DIR"/patches/fast/*.patch | sha256sum)"
  # Only a oneDNN 3.2 build adds to the recipe: the 2.6 builds keep their prefixes.
  [ "$onednn" != 3.2 ] || fast_recipe+=" onednn $ONEDNN3_WHEELS $(cat "$ENGINE_DIR/Makefile.onednn3.config" \
    "$ENGINE_DIR"/patches/onednn3/*.patch | sha256sum)"
fi

cache=${HINTKD_CACHE:-$HOME/.cache/hintkd}
cuda_recipe=""
if [ "$variant" = cuda ]; then
  cuda_dir=$(choose_cuda)
  cuda_arch=$(cuda_arch_flags)
  cuda_recipe="cuda $cuda_dir $cuda_arch"
fi
recipe_hash=$(cat "$ENGINE_DIR/Makefile.config" "$ENGINE_DIR"/patches/*.patch <(echo "$CAFFE_SDIST_NAME $CAFFE_SDIST_VERSION \
  $CAFFE_SDIST_SHA256 $variant $EXTRA_LAYERS $BUILD_RECIPE") <(echo -n "$cuda_recipe$fast_recipe") | sha256sum | cut -c1-10)
prefix="$cache/caffe-$CAFFE_SDIST_VERSION-$variant-$recipe_hash"

case "$action" in
  print) echo "$prefix"; exit 0 ;;
  check) [ -f "$prefix/BUILD-INFO.json" ]; exit $? ;;
esac
prebuilt="$PREBUILT/$(basename "$prefix")"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else
    say "needs root (or sudo) for: $*"
    exit 1
  fi
}

missing_packages() {
  local pkg
  for pkg in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || echo "$pkg"
  done
}

install_debian_packages() {
  local missing
  mapfile -t missing < <(missing_packages "$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# Debian's CUDA toolkit lives in the non-free component, off by default.
enable_debian_non_free() {
  [[ $(apt-cache policy nvidia-cuda-toolkit 2>/dev/null) == *"Candidate: "[0-9]* ]] && return 0
  say "enabling Debian's contrib and non-free components for nvidia-cuda-toolkit"
  local codename; codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  as_root tee /etc/apt/sources.list.d/hintkd-non-free.sources >/dev/null <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  as_root apt-get update -qq
}

fetch_source() {
  local name="$CAFFE_SDIST_NAME-$CAFFE_SDIST_VERSION.tar.gz"
  local sdist="$cache/src/$name"
  if [ -n "${HINTKD_CAFFE_SDIST:-}" ]; then
    sdist=$HINTKD_CAFFE_SDIST
  elif [ -f "$BUILD_INPUTS/$name" ]; then
    sdist="$BUILD_INPUTS/$name"
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

# oneDNN 3.2's headers and library from PyPI's wheels, checked by sha256, fetched
# once into the cache (whole or not at all); prints the folder.
fetch_onednn3() {
  local root="$cache/onednn-cpu-gomp-$ONEDNN3_VERSION" entry name sha256 wheel dl
  if [ ! -f "$root/lib/libdnnl.so.3" ]; then
    say "downloading oneDNN 3.2 (onednn-cpu-gomp==$ONEDNN3_VERSION and its headers, 39 MB)"
    mkdir -p "$cache"
    dl=$(mktemp -d "$cache/onednn.XXXXXX")
    trap 'rm -rf "$dl"' EXIT  # a failed download leaves nothing
    for entry in $ONEDNN3_WHEELS; do
      name=${entry%=*} sha256=${entry#*=}
      python3 -m pip download -q --no-deps --only-binary :all: "$name==$ONEDNN3_VERSION" -d "$dl/wheels" >&2
      wheel=$(ls "$dl/wheels/${name//-/_}-$ONEDNN3_VERSION"-*.whl)
      if ! echo "$sha256  $wheel" | sha256sum -c --status; then
        say "checksum mismatch for $wheel (expected sha256 $sha256)"
        exit 1
      fi
      python3 -m zipfile -e "$wheel" "$dl/unpacked"
    done
    # A wheel keeps its files under <name>.data/data/ (zip has no symbolic links:
    # libdnnl.so, .so.3 and .so.3.2 are three copies of one library).
    mkdir -p "$dl/onednn/lib"
    cp -r "$dl"/unpacked/*.data/data/include "$dl/onednn/"
    cp "$dl"/unpacked/*.data/data/lib/libdnnl.so.3 "$dl/onednn/lib/"
    ln -s libdnnl.so.3 "$dl/onednn/lib/libdnnl.so"
    rm -rf "$root"
    mv "$dl/onednn" "$root"
    rm -rf "$dl"
    trap - EXIT
  fi
  echo "$root"
}

build() {
  local sdist=$1 work=$2
  tar xzf "$sdist" -C "$work"
  local tree="$work/$CAFFE_SDIST_NAME-$CAFFE_SDIST_VERSION" layer
  for layer in $EXTRA_LAYERS; do
    rm -f "$tree/src/caffe/layers/${layer}_layer."{cpp,cu} "$tree/include/caffe/layers/${layer}_layer.hpp"
  done
  local patch patches=("$ENGINE_DIR"/patches/*.patch)  # fixes to the source, each explained inside
  [ "$variant" = cpu ] && patches+=("$ENGINE_DIR"/patches/fast/*.patch)
  [ "$onednn" = 3.2 ] && patches+=("$ENGINE_DIR"/patches/onednn3/*.patch)
  for patch in "${patches[@]}"; do
    patch -s -d "$tree" -p1 < "$patch"
  done
  cp "$ENGINE_DIR/Makefile.config" "$tree/Makefile.config"
  [ "$variant" = cpu ] && cat "$ENGINE_DIR/Makefile.fast.config" >> "$tree/Makefile.config"
  [ "$onednn" = 3.2 ] && cat "$ENGINE_DIR/Makefile.onednn3.config" >> "$tree/Makefile.config"
  local jobs=${HINTKD_JOBS:-$(nproc)} log="$work/build.log" total
  # Compile steps, one link step per tool, and the library, pycaffe and proto steps.
  total=$(( $(find "$tree/src/caffe" "$tree/tools" -name '*.cpp' ! -name 'test_*' | wc -l)
            + $(find "$tree/tools" -maxdepth 1 -name '*.cpp' | wc -l) + 4 ))
  say "building Caffe ($variant) with $jobs jobs; full log: $log"
  local status=0 device_flags=(CPU_ONLY=1)
  [ "$variant" = cpu ] && device_flags+=("OPTIMIZATION=$optimization")
  [ "$onednn" = 3.2 ] && device_flags+=("ONEDNN3_ROOT=$onednn3_root")
  if [ "$variant" = cuda ]; then
    device_flags=(CPU_ONLY= "CUDA_DIR=$cuda_dir" "CUDA_ARCH=$cuda_arch")
    # nvcc runs ptxas, nvlink and fatbinary from PATH: the chosen toolkit's go first
    # (Debian's sit in /usr/bin; another CUDA's in /usr/local/bin must not win).
    local tools="$cuda_dir/bin"
    [ "$cuda_dir" = "$DEBIAN_CUDA_DIR" ] && tools+=":/usr/bin"
    export PATH="$tools:$PATH"
    total=$(( total + $(find "$tree/src/caffe" -name '*.cu' ! -name 'test_*' | wc -l) ))
  fi
  make -C "$tree" -j"$jobs" all pycaffe "${device_flags[@]}" 2>&1 | tee "$log" | build_progress "$total" || status=$?
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
  cp "$tree/Makefile.config" "$stage/Makefile.config"
  # libcaffe finds its libraries' sonames in $ORIGIN/../lib, its own folder.
  [ "$onednn" = 3.2 ] && cp "$onednn3_root/lib/libdnnl.so.3" "$stage/lib/"
  smoke_test "$stage"
  cat > "$stage/BUILD-INFO.json" <<JSON
{"source": "$CAFFE_SDIST_NAME==$CAFFE_SDIST_VERSION", "sha256": "$CAFFE_SDIST_SHA256",
 "variant": "$variant", "recipe": "$recipe_hash", "python": "/usr/bin/python3",
 "fast": $([ "$variant" = cpu ] && echo true || echo false), "optimization": "${optimization:--O2}",
 "onednn": "$onednn",
 "cuda_dir": "${cuda_dir:-}", "cuda_arch": "${cuda_arch:-}",
 "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
JSON
}

smoke_test() {
  "$1/bin/caffe" --version >&2
  /usr/bin/python3 -c "import sys; sys.path.insert(0, '$1/python'); import caffe; print('pycaffe', caffe.__version__)" >&2
}

# Packages of Debian's CUDA toolkit (non-free), only when that toolkit is the one in use.
install_debian_cuda_packages() {
  [ "$variant" = cuda ] && [ "$cuda_dir" = "$DEBIAN_CUDA_DIR" ] && [ -n "$(missing_packages "$@")" ] || return 0
  enable_debian_non_free
  install_debian_packages "$@"
}

# What running a build needs; a no-op (no root needed) when it is all there.
install_runtime_packages() {
  # shellcheck disable=SC2086  # word lists
  install_debian_packages $RUNTIME_PACKAGES $RUNTIME_LIBRARIES
  install_debian_cuda_packages $CUDA_RUNTIME_LIBRARIES
  [ "$variant" != cpu ] || install_debian_packages $FAST_RUNTIME_LIBRARIES
}

if [ "$action" = fetch ]; then
  install_debian_packages python3-pip
  mkdir -p "$cache/src"
  fetch_source
  exit 0
fi
if [ "$action" = fetch-onednn3 ]; then
  install_debian_packages python3-pip
  fetch_onednn3
  exit 0
fi
if [ "$action" = runtime ] || [ -f "$prefix/BUILD-INFO.json" ]; then
  install_runtime_packages
  [ "$action" = runtime ] || echo "$prefix"
  exit 0
fi
install_runtime_packages
# A finished build of this recipe handed in (an image build): no compiler, no CUDA toolkit.
if [ ! -f "$prebuilt/BUILD-INFO.json" ]; then
  # shellcheck disable=SC2086
  install_debian_packages $BUILD_PACKAGES
  [ "$variant" != cpu ] || install_debian_packages $FAST_BUILD_PACKAGES
  install_debian_cuda_packages $DEBIAN_CUDA_PACKAGES
fi
mkdir -p "$cache/src"
exec 9>"$cache/install.lock"
flock 9   # a second installer waits here, then finds the finished build
if [ -f "$prefix/BUILD-INFO.json" ]; then
  echo "$prefix"
  exit 0
fi
rm -rf "$prefix" "$prefix".tmp.* "$cache"/build.*   # leftovers of interrupted builds
started=$(date +%s)
if [ -f "$prebuilt/BUILD-INFO.json" ]; then
  say "installing the build of this recipe found in $prebuilt (checked, not compiled again)"
  trap 'rm -rf "$prefix.tmp.$$"' EXIT
  cp -a "$prebuilt" "$prefix.tmp.$$"
  smoke_test "$prefix.tmp.$$"
else
  sdist=$(fetch_source)
  [ "$onednn" != 3.2 ] || onednn3_root=$(fetch_onednn3)
  work=$(mktemp -d "$cache/build.XXXXXX")
  trap 'rm -rf "$work" "$prefix.tmp.$$"' EXIT
  build "$sdist" "$work"
  assemble "$work" "$prefix.tmp.$$"
fi
mv "$prefix.tmp.$$" "$prefix"
say "installed Caffe in $prefix ($(( $(date +%s) - started )) s)"
echo "$prefix"
