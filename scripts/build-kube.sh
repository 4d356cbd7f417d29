#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from Debian's `kubernetes` source package and caches them.
# No registry reachable from CI ships these binaries, so we compile the distribution's vendored source once
# (about 8-9 minutes on two cores) and reuse the result; a second run exits at once.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=1.20.2
cache=${TUNEOPS_CACHE:-$HOME/.cache/tuneops}
dest="$cache/k8s-$version"
bins=(kube-apiserver kube-controller-manager)

have_all() {
  for b in "${bins[@]}"; do [ -x "$dest/$b" ] || return 1; done
}

start=$(date +%s)
stamp() { echo "build-kube: $1 (+$(( $(date +%s) - start ))s)"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Runtime tools (etcd, jq) are needed even when the binaries are cached.
pkgs=(golang-go etcd-server etcd-client rsync jq golang-github-modern-go-reflect2-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  stamp "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  stamp "packages installed"
fi

# Helm comes with the bed: the chart is tested against the same API server.
"$root/scripts/get-helm.sh"

if have_all; then
  echo "build-kube: cached in $dest"
  exit 0
fi

work=${TUNEOPS_KUBE_WORK:-$cache/build/kubernetes-$version}
rm -rf "$work"
mkdir -p "$work/parts" "$work/lists/partial" "$work/archives/partial" "$work/src"

# A private source list derived from the machine's own, so the system apt configuration stays untouched
# and no mirror is named here.
found=0
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$work/parts/src.sources"
  found=1
fi
if [ -f /etc/apt/sources.list ] && grep -qE '^deb ' /etc/apt/sources.list; then
  grep -E '^deb ' /etc/apt/sources.list | sed -E 's/^deb /deb-src /' >"$work/parts/src.list"
  found=1
fi
if [ "$found" = 0 ]; then
  echo "build-kube: no apt sources found in /etc/apt to derive a deb-src list from" >&2
  exit 1
fi
aptopts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts"
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives")
# The private folders are ours, not the _apt user's; as root, download without dropping privileges.
[ "$(id -u)" = 0 ] && aptopts+=(-o APT::Sandbox::User=root)
stamp "fetching source index"
apt-get "${aptopts[@]}" update -qq
(cd "$work/src" && apt-get "${aptopts[@]}" source --download-only -qq kubernetes)
stamp "source downloaded"

orig=$(ls "$work/src"/kubernetes_*.orig.tar.* | head -n1)
tree="$work/tree"
mkdir -p "$tree"
tar -xf "$orig" -C "$tree" --strip-components=1
stamp "source unpacked"

# Vendored reflect2 v1.0.1 crashes under Go >= 1.18 (fatal error in mapiterinit on the first custom resource
# POST); Debian's packaged reflect2 is fixed and API-compatible.
fixed=/usr/share/gocode/src/github.com/modern-go/reflect2
vend="$tree/vendor/github.com/modern-go/reflect2"
[ -d "$fixed" ] || { echo "build-kube: $fixed missing" >&2; exit 1; }
find "$vend" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
find "$fixed" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$vend/" \;

gopath="$work/.go"
mkdir -p "$gopath/src/k8s.io"
ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"
stamp "compiling ${bins[*]} (several minutes)"
(
  cd "$gopath/src/k8s.io/kubernetes"
  GOPATH="$gopath" GOCACHE="$work/gocache" CGO_ENABLED=0 GOPROXY=off \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" GOLDFLAGS="-s -w" >"$work/make.log" 2>&1
) || { tail -n 40 "$work/make.log" >&2; exit 1; }
stamp "compiled"

mkdir -p "$dest.tmp"
for b in "${bins[@]}"; do
  out=$(find "$tree/_output" -type f -name "$b" -perm -u+x | head -n1)
  [ -n "$out" ] || { echo "build-kube: $b not produced" >&2; exit 1; }
  install -m 0755 "$out" "$dest.tmp/$b"
done
rm -rf "$dest" && mv "$dest.tmp" "$dest"
"$dest/kube-apiserver" --version
rm -rf "$work"
stamp "installed into $dest"
