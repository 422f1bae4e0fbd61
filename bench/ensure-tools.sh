#!/usr/bin/env bash
# Installs what `./build.sh bench` needs, idempotently (a second run does nothing):
#   wrk      closed-loop throughput      (Debian package wrk)
#   taskset  CPU pinning                 (Debian package util-linux)
#   oha      open-loop latency           (crates.io, pinned, built once per machine)
# oha goes where ./build.sh keeps host tools built from crates.io: $SURGEGUARD_TOOLS, else
# ${XDG_CACHE_HOME:-~/.cache}/surgeguard/tools (per machine, not per clone, so a fresh clone
# does not rebuild it). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
OHA_VERSION=1.16.0

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ensure-tools.sh: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
# apt_update_once SUDO: `apt-get update`, at most once per run.
apt_update_once() {
  [ "$APT_UPDATED" = 0 ] || return 0
  say "apt-get update"
  $1 apt-get update -qq >&2 || die "apt-get update failed (no network to the Debian mirror?)"
  APT_UPDATED=1
}

# ensure_apt COMMAND PACKAGE: installs PACKAGE from Debian if COMMAND is missing; runs
# `apt-get update` once, and only when an install is needed.
ensure_apt() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "$cmd is missing and apt-get is not available to install $pkg"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null 2>&1; then
    apt_update_once "$sudo"
    say "installing $pkg (for $cmd)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >&2 || die "apt-get install $pkg failed"
  fi
  command -v "$cmd" >/dev/null 2>&1 || die "$pkg installed but $cmd is still missing"
}

# ensure_deb PACKAGE: installs a Debian package that provides no command (a library).
ensure_deb() {
  dpkg -s "$1" >/dev/null 2>&1 && return 0
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  apt_update_once "$sudo"
  say "installing $1"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$1" >&2 || die "apt-get install $1 failed"
}

ensure_apt wrk wrk
ensure_apt taskset util-linux

TOOLS_ROOT=${SURGEGUARD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/surgeguard/tools}
oha=$TOOLS_ROOT/bin/oha
if [ ! -x "$oha" ] || [ "$("$oha" --version 2>/dev/null | awk '{print $2}')" != "$OHA_VERSION" ]; then
  ensure_apt pkg-config pkg-config
  ensure_deb libssl-dev
  say "installing oha $OHA_VERSION into $TOOLS_ROOT (once per machine; a few minutes)"
  # native-tls (the system OpenSSL) rather than rustls: the bench only talks plain HTTP to
  # 127.0.0.1, and this skips building a crypto library. oha needs one TLS backend to compile.
  cargo install -q --locked --root "$TOOLS_ROOT" --no-default-features --features native-tls oha --version "$OHA_VERSION" >&2 \
    || die "cargo install oha $OHA_VERSION failed (no network to crates.io?)"
fi
say "tools: $(command -v wrk), $(command -v taskset), $oha ($("$oha" --version))"
