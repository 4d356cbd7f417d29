#!/usr/bin/env bash
# Builds llama.cpp once (the copy vendored by the llama-cpp-python sdist) and caches it; a second run is a no-op.
#
# One CMake build gives every llama.cpp piece tuneops uses: the quantizer and converter for the GGUF worker,
# llama-server for `runtime: llamacpp` InferenceServices, llama-perplexity, and the shared libraries that the
# llama-cpp-python bindings load (so the bindings are never compiled a second time).
#
# Cache layout ($TUNEOPS_CACHE/llama.cpp-<ver>/, see tuneops.toolpaths.llamacpp_dir()):
#   bin/llama-quantize, bin/llama-server, bin/llama-perplexity   tools (RPATH $ORIGIN/../lib)
#   lib/libllama.so, lib/libggml*.so, lib/libmtmd.so            shared libraries
#   convert_hf_to_gguf.py, conversion/, gguf-py/                 the converter at the matching version
#   python/llama_cpp/                                            the bindings' Python code; lib -> ../../lib
#   VERSION                                                      written last: the cache is complete
#
# The project venv (arg 1, default .venv) gets a .pth file that puts python/ on sys.path, so
# `import llama_cpp` works there without a wheel. Env: JOBS (parallel compile jobs, default nproc).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv}
ver=$(sed -n 's/^LLAMACPP_VERSION = "\([^"]*\)".*/\1/p' "$root/operator/tuneops/toolpaths.py")
cache=${TUNEOPS_CACHE:-$HOME/.cache/tuneops}
dest="$cache/llama.cpp-$ver"

link_venv() {
  [ -x "$venv/bin/python" ] || return 0
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$dest/python" > "$site/tuneops-llama-cpp.pth"
}

if [ -f "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$ver" ]; then
  link_venv
  exit 0
fi

command -v cmake >/dev/null && command -v g++ >/dev/null || {
  echo "llamacpp: installing cmake and a C++ compiler"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ make >/dev/null
}

start=$(date +%s)
work="$cache/build/llama.cpp-$ver"
rm -rf "$work" "$dest.tmp"
mkdir -p "$work" "$dest.tmp"
echo "llamacpp: fetching the llama-cpp-python $ver sdist"
python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$work"
tar -xzf "$work"/llama_cpp_python-"$ver".tar.gz -C "$work"
src="$work/llama_cpp_python-$ver"
lc="$src/vendor/llama.cpp"

# GGML_NATIVE=OFF: portable AVX2 build (a cached build may move to another machine of the same kind).
# No UI download, no curl, no OpenSSL: nothing may be fetched at build time.
echo "llamacpp: compiling (first run only; ~10 min on 2 cores)"
cmake -S "$lc" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=ON \
  -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON -DCMAKE_INSTALL_RPATH='$ORIGIN/../lib' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
  >"$work/cmake.log" 2>&1 || { tail -40 "$work/cmake.log"; exit 1; }
cmake --build "$work/build" -j "${JOBS:-$(nproc)}" \
  --target llama-quantize llama-server llama-perplexity llama mtmd \
  >"$work/build.log" 2>&1 || { tail -60 "$work/build.log"; exit 1; }

mkdir -p "$dest.tmp/bin" "$dest.tmp/lib" "$dest.tmp/python"
for t in llama-quantize llama-server llama-perplexity; do
  cp "$work/build/bin/$t" "$dest.tmp/bin/"
done
find "$work/build" -name '*.so*' \( -type f -o -type l \) -exec cp -P {} "$dest.tmp/lib/" \;
cp "$lc/convert_hf_to_gguf.py" "$dest.tmp/"
cp -r "$lc/conversion" "$lc/gguf-py" "$dest.tmp/"
cp -r "$src/llama_cpp" "$dest.tmp/python/"
rm -rf "$dest.tmp/python/llama_cpp/lib"
ln -s ../../lib "$dest.tmp/python/llama_cpp/lib"
echo "$ver" > "$dest.tmp/VERSION"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
rm -rf "$work"
link_venv
"$dest/bin/llama-quantize" --help >/dev/null 2>&1 || [ $? -le 1 ]
echo "llamacpp: built in $(( $(date +%s) - start ))s -> $dest"
