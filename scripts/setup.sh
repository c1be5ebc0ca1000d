#!/usr/bin/env bash
# Installs what kiln needs on a fresh Debian 12 machine and builds build/kiln.
# Idempotent and quick when everything is already there.
#   KILN_CACHE      cache for the torch virtual environment and ccache (default ~/.cache/kiln)
#   KILN_TORCH_DIR  an existing LibTorch (its share/cmake dir or the libtorch root) to use instead
#   KILN_BUILD_TYPE Release (default) or Debug
#   KILN_JOBS       parallel compile jobs (default: number of cores)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${KILN_CACHE:-$HOME/.cache/kiln}
torch_version=2.11.0
mkdir -p "$cache"
say() { echo "[setup] $*" >&2; }

# 1. Debian packages. A machine without network (the GPU machines) may have everything
#    installed some other way: then a failed apt-get is a warning, and CMake names what is missing.
pkgs=(build-essential cmake pkg-config ccache libopenmpi-dev openmpi-bin libyaml-cpp-dev
      nlohmann-json3-dev libsentencepiece-dev sentencepiece libxxhash-dev libgtest-dev python3-venv
      libprotobuf-c-dev protobuf-c-compiler libisal-dev libopenblas-openmp-dev
      fortunes fortunes-zh)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
  if ! { $sudo_cmd apt-get update -qq && \
         DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    say "warning: apt-get could not install ${missing[*]}; going on with what is installed"
  fi
fi

# 2. LibTorch: KILN_TORCH_DIR, else the machine's python3 torch (C++11 ABI), else a pinned
#    wheel in a virtual environment under the cache.
torch_cmake=""
python_for_tests=""
if [ -n "${KILN_TORCH_DIR:-}" ]; then
  if [ -d "$KILN_TORCH_DIR/share/cmake/Torch" ]; then torch_cmake="$KILN_TORCH_DIR/share/cmake"
  else torch_cmake="$KILN_TORCH_DIR"; fi
  say "using LibTorch from KILN_TORCH_DIR=$KILN_TORCH_DIR"
fi
probe='import torch,torch.utils;assert torch._C._GLIBCXX_USE_CXX11_ABI;print(torch.utils.cmake_prefix_path)'
if [ -z "$torch_cmake" ] && [ ! -x "$cache/venv/bin/python" ] && command -v python3 >/dev/null \
   && sys_torch=$(python3 -c "$probe" 2>/dev/null); then
  torch_cmake=$sys_torch
  python_for_tests=$(command -v python3)
  say "using the torch of python3: $torch_cmake"
fi
if [ -z "$torch_cmake" ]; then
  if [ ! -x "$cache/venv/bin/python" ]; then
    say "creating $cache/venv"
    python3 -m venv "$cache/venv"
  fi
  if ! "$cache/venv/bin/python" -c "import torch; assert torch.__version__.startswith('$torch_version')" 2>/dev/null; then
    say "installing torch==$torch_version into $cache/venv (a large download, once)"
    "$cache/venv/bin/pip" install -q "torch==$torch_version"
  fi
  # Only the test fixtures and benchmarks use these; kiln itself never runs Python.
  # peft and bitsandbytes make the LoRA/DoRA and NF4 reference fixtures (bitsandbytes quantizes on
  # the CPU) and check that a kiln-written adapter loads with PEFT; tensorboard reads event files back.
  if ! "$cache/venv/bin/python" -c "import transformers, safetensors, sentencepiece, peft, bitsandbytes, tensorboard" 2>/dev/null; then
    "$cache/venv/bin/pip" install -q "transformers>=4.45" safetensors sentencepiece numpy "peft>=0.13" "bitsandbytes>=0.45" tensorboard
  fi
  torch_cmake=$("$cache/venv/bin/python" -c "$probe")
  python_for_tests="$cache/venv/bin/python"
fi

# CUDA: build GPU code when nvcc's major version matches torch's CUDA major version.
cuda=OFF
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  nvcc_major=$("$nvcc_bin" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
  torch_cuda=$("${python_for_tests:-python3}" -c 'import torch;print(torch.version.cuda or "")' 2>/dev/null || true)
  if [ -n "$torch_cuda" ] && [ "${torch_cuda%%.*}" = "$nvcc_major" ]; then
    cuda=ON
    export CUDACXX=$nvcc_bin
  else
    say "CUDA off: nvcc major '$nvcc_major', torch CUDA '${torch_cuda:-none}'"
  fi
fi

# 3. Build.
export CCACHE_DIR=${CCACHE_DIR:-$cache/ccache}
# Paths relative to the clone, so a fresh clone elsewhere (CI) hits the same cache entries.
export CCACHE_BASEDIR=$here CCACHE_NOHASHDIR=1
build=$here/build
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE="${KILN_BUILD_TYPE:-Release}" \
  -DCMAKE_PREFIX_PATH="$torch_cmake" -DKILN_CUDA=$cuda \
  -DKILN_PYTHON="${python_for_tests}" >"$build.cmake.log" 2>&1 \
  || { cat "$build.cmake.log" >&2; exit 1; }
set +e
cmake --build "$build" -j "${KILN_JOBS:-$(nproc)}" 2>&1 | grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)'
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] && [ -x "$build/kiln" ] || { say "build failed"; exit 1; }
echo "${python_for_tests}" > "$build/python_path"
say "built $build/kiln"

# 4. The bundled example corpus and tokenizer (generated from Debian's fortune packages).
corpus=$here/configs/examples/corpus
if [ ! -f "$corpus/tokenizer.model" ] || [ ! -f "$corpus/data.json" ]; then
  if [ -e /usr/share/games/fortunes/tang300.u8 ]; then
    say "making the example corpus in $corpus"
    KILN="$build/kiln" "$here/scripts/make-example-corpus.sh" "$corpus"
  else
    say "warning: no fortunes/fortunes-zh packages: the example corpus (demo) is not made; the tests do not need it"
  fi
fi
