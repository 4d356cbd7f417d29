#!/usr/bin/env bash
# Puts the published schemas of the third-party kinds the operator renders (KEDA ScaledObject, Gateway API
# HTTPRoute) into the tool cache: npm's @kubernetes-models packages, generated from those projects' own API
# definitions, installed with npm into <cache>/crd-schemas. Exits at once when they are cached.
set -euo pipefail

keda=2.0.0          # @kubernetes-models/keda (KEDA 2.x keda.sh/v1alpha1)
gateway=2.0.0       # @kubernetes-models/gateway-api (gateway.networking.k8s.io/v1)
cache=${TUNEOPS_CACHE:-$HOME/.cache/tuneops}
dest="$cache/crd-schemas-keda$keda-gateway$gateway"

if [ -f "$dest/.complete" ]; then
  exit 0
fi
mkdir -p "$dest"
cd "$dest"
echo '{"private": true}' > package.json
npm install --ignore-scripts --no-audit --no-fund --loglevel=error \
  "@kubernetes-models/keda@$keda" "@kubernetes-models/gateway-api@$gateway"
touch .complete
echo "$dest"
