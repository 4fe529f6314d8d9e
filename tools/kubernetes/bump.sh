#!/usr/bin/env bash
# Pins this wrapper module to another Kubernetes release: requires
# k8s.io/kubernetes at that version and replaces every k8s.io staging module
# that its go.mod requires (they appear there as v0.0.0 with a replace into
# ./staging, which does not apply to a module depending on it) with the
# matching v0.X.Y, then tidies go.mod and go.sum.
#
# Usage: tools/kubernetes/bump.sh v1.37.3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

version=${1:?usage: $0 v1.X.Y}
[[ $version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "not a release version: $version" >&2; exit 2; }
staging=v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}

upstream=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[[ -f $upstream ]] || { echo "could not download k8s.io/kubernetes@$version" >&2; exit 1; }

# Staging modules: replaced into ./staging upstream AND required there.
mapfile -t mods < <(
  go mod edit -json "$upstream" | python3 -c '
import json, sys
m = json.load(sys.stdin)
req = {r["Path"] for r in m.get("Require") or []}
for r in m.get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/") and r["Old"]["Path"] in req:
        print(r["Old"]["Path"])
')
((${#mods[@]})) || { echo "found no staging modules in $upstream" >&2; exit 1; }

# Drop the old replace directives, then add one block of new ones.
awk '
  /^replace \($/ { skip = 1; next }
  skip && /^\)$/ { skip = 0; next }
  skip || /^replace / { next }
  { print }
' go.mod >go.mod.tmp
{
  cat -s go.mod.tmp
  echo
  echo "replace ("
  for m in "${mods[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
  echo ")"
} >go.mod
rm -f go.mod.tmp
go mod edit -require="k8s.io/kubernetes@$version"
go mod tidy
echo "tools/kubernetes now builds Kubernetes $version (${#mods[@]} staging modules at $staging)"
