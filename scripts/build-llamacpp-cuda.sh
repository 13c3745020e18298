#!/usr/bin/env bash
# Build llama-cpp-python with CUDA for this machine's GPU architecture only, offline, from a pre-downloaded sdist
# (ideally repacked by scripts/repack-llamacpp-sdist.sh), and install it.
#
# usage: scripts/build-llamacpp-cuda.sh SDIST.tar.gz|SDIST_DIR [WHEEL_DIR=dist/llamacpp-cuda]
#        (a directory: the newest llama_cpp_python-*.tar.gz in it, e.g. what `pip download` left there)
# env:   PYTHON (python3), CUDA_ARCH (e.g. 90; default: detected), INSTALL=0 (only build the wheel),
#        PIP_INSTALL_ARGS (extra args for the install, e.g. "--target /tmp/site")
# needs: nvcc + cuBLAS (CUDA toolkit), cmake >= 3.21, ninja, scikit-build-core in PYTHON (no build isolation: no internet)
set -euo pipefail
sdist=${1:?usage: $0 SDIST.tar.gz|SDIST_DIR [WHEEL_DIR]}
if [ -d "$sdist" ]; then
  dir=$sdist
  sdist=$(ls -t "$dir"/llama_cpp_python-*.tar.gz 2>/dev/null | head -1 || true)
  [ -n "$sdist" ] || { echo "error: no llama_cpp_python-*.tar.gz in $dir" >&2; exit 2; }
fi
out=${2:-dist/llamacpp-cuda}
py=${PYTHON:-python3}
arch=${CUDA_ARCH:-}
if [ -z "$arch" ] && command -v nvidia-smi >/dev/null 2>&1; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)
fi
if [ -z "$arch" ]; then
  arch=$("$py" -c 'import torch; M, m = torch.cuda.get_device_capability(); print(f"{M}{m}")' 2>/dev/null || true)
fi
[ -n "$arch" ] || { echo "error: no NVIDIA GPU detected; set CUDA_ARCH (e.g. CUDA_ARCH=90 for H100)" >&2; exit 2; }
if ! command -v nvcc >/dev/null 2>&1; then
  for c in /usr/local/cuda/bin /opt/cuda/bin; do [ -x "$c/nvcc" ] && export PATH="$c:$PATH" && break; done
fi
command -v nvcc >/dev/null 2>&1 || { echo "error: nvcc not found (install the CUDA toolkit or put it on PATH)" >&2; exit 2; }
export CUDACXX=${CUDACXX:-$(command -v nvcc)}
"$py" -c 'import scikit_build_core' 2>/dev/null || { echo "error: $py lacks scikit-build-core (pip install scikit-build-core)" >&2; exit 2; }
command -v cmake >/dev/null 2>&1 || "$py" -c 'import cmake' 2>/dev/null || { echo "error: cmake not found" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar xzf "$sdist" -C "$tmp"
src=$(ls -d "$tmp"/*/ | head -1)
marker="$src/llama_cpp/_luce_build.json"
commit=unknown
if [ -f "$marker" ]; then
  commit=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("llama_cpp_commit","unknown"))' "$marker")
elif [ -f "$src/.git/modules/vendor/llama.cpp/HEAD" ]; then
  commit=$(head -c 9 "$src/.git/modules/vendor/llama.cpp/HEAD")
fi
flags="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${arch}-real -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
flags="$flags -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF"
nvcc_v=$(nvcc --version | tail -1)
"$py" - "$marker" "$commit" "$arch" "$flags" "$nvcc_v" <<'PY'
import json, sys
path, commit, arch, flags, nvcc = sys.argv[1:]
json.dump({"llama_cpp_commit": commit, "recipe": "scripts/build-llamacpp-cuda.sh", "cuda_arch": arch,
           "cmake_args": flags, "nvcc": nvcc}, open(path, "w"))
PY
export CMAKE_ARGS="$flags"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
echo "building llama-cpp-python for sm_${arch} (commit $commit, $CMAKE_BUILD_PARALLEL_LEVEL jobs)"
mkdir -p "$out"
t0=$(date +%s)
"$py" -m pip wheel --no-build-isolation --no-deps --no-cache-dir -w "$out" "$src"
t1=$(date +%s)
echo "build_seconds=$((t1 - t0))"
whl=$(ls -t "$out"/llama_cpp_python-*.whl | head -1)
# A wheel cannot hold symlinks, so every library lands three times (libX.so, libX.so.0, libX.so.0.25.3): keep
# libllama.so (what llama_cpp dlopens) and each other library under its SONAME only (what the linker looks for).
# 0.3.36 + CUDA sm_90: 147 MB as built, about 23 MB slimmed.
"$py" - "$whl" <<'PY'
import base64, hashlib, os, re, sys, zipfile
src = sys.argv[1]
tmp = src + ".slim"
keep = re.compile(r"llama_cpp/lib/(libllama\.so|lib(?!llama)[\w-]+\.so\.\d+)$")
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zo:
    # only the package and its metadata: llama.cpp's own install rules also put lib/, include/ and bin/ at the
    # wheel root (they would land in site-packages itself)
    names = [n for n in zi.namelist()
             if ".dist-info/" in n or (n.startswith("llama_cpp/") and ("/lib/" not in n or keep.search(n)))]
    if not any(n.endswith("/libllama.so") for n in names):  # unexpected layout: keep the wheel as built
        sys.exit(0)
    record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
    rows = []
    for n in names:
        if n == record_name:
            continue
        data = zi.read(n)
        info = zi.getinfo(n)
        zo.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{n},sha256={digest},{len(data)}")
    rows.append(f"{record_name},,")
    zo.writestr(record_name, "\n".join(rows) + "\n")
os.replace(tmp, src)
PY
ls -l "$whl"
if [ "${INSTALL:-1}" = 1 ]; then
  # shellcheck disable=SC2086
  "$py" -m pip install --no-deps --no-index --force-reinstall ${PIP_INSTALL_ARGS:-} "$whl"
  echo "installed $whl; needs diskcache, numpy, jinja2, typing-extensions at import"
fi
