#!/usr/bin/env bash
# Repack the llama-cpp-python sdist for offline CUDA builds: drop .git, vendor/llama.cpp/{models,docs} (77 MB -> ~13 MB,
# under the device's 64 MiB carry limit) and record the vendored llama.cpp commit in llama_cpp/_luce_build.json, since
# the build can no longer read it from git.
#
# usage: scripts/repack-llamacpp-sdist.sh llama_cpp_python-0.3.36.tar.gz [OUT_DIR=.carry/llamacpp]
# get the sdist (on a machine with internet): pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36
set -euo pipefail
src=${1:?usage: $0 SDIST.tar.gz [OUT_DIR]}
out=${2:-.carry/llamacpp}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar xzf "$src" -C "$tmp"
top=$(ls "$tmp")
d="$tmp/$top"
commit=unknown
if [ -f "$d/.git/modules/vendor/llama.cpp/HEAD" ]; then
  commit=$(head -c 9 "$d/.git/modules/vendor/llama.cpp/HEAD")
fi
rm -rf "$d/.git" "$d/vendor/llama.cpp/.git" "$d/vendor/llama.cpp/models" "$d/vendor/llama.cpp/docs"
printf '{"llama_cpp_commit": "%s", "sdist": "%s"}\n' "$commit" "$(basename "$src")" > "$d/llama_cpp/_luce_build.json"
mkdir -p "$out"
tar czf "$out/$top-repacked.tar.gz" -C "$tmp" "$top"
ls -l "$out/$top-repacked.tar.gz"
echo "vendored llama.cpp commit: $commit"
