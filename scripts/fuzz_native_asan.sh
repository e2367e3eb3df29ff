#!/usr/bin/env bash
# Fuzz the C data path under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   scripts/fuzz_native_asan.sh [fuzz.py arguments...]
#
# Default: the three native harnesses, 100k generated inputs each:
#   --only native_seal native_open native_coalesce --inputs 100000
# Any arguments replace those (e.g. `--only native_open --inputs 5000 --seed 3`).
#
# It compiles src/wiretun/datapath/_native.c (or $NATIVE_SRC, e.g. a scratch copy with a
# planted bug) with -fsanitize=address,undefined -fno-sanitize-recover=all into a temporary
# copy of the package, puts that first on PYTHONPATH, checks that the sanitized module is
# the one imported, and runs scripts/fuzz.py there at nice 10. Exit status: non-zero on any
# finding, whether a sanitizer report (the process aborts; the input being run is left in
# $CRASH_DIR/last-input) or a harness failure (native != pure, an escaped exception, a hang).
#
# Environment: PYTHON (default .venv/bin/python), NATIVE_SRC, CRASH_DIR
# (default /tmp/wiretun-fuzz-crashes/asan), KEEP=1 keeps the build directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
SRC="${NATIVE_SRC:-$ROOT/src/wiretun/datapath/_native.c}"
CRASH_DIR="${CRASH_DIR:-/tmp/wiretun-fuzz-crashes/asan}"
[ -x "$PY" ] || { echo "no $PY: run 'make venv' first (or set PYTHON)" >&2; exit 2; }
if [ $# -eq 0 ]; then
  set -- --only native_seal native_open native_coalesce --inputs 100000
fi

WORK="$(mktemp -d /tmp/wiretun-asan.XXXXXX)"
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

# A copy of the package with only the sanitized extension in it (no stale in-place build).
cp -r "$ROOT/src/wiretun" "$WORK/wiretun"
find "$WORK/wiretun" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
EXT_SUFFIX="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
SO="$WORK/wiretun/datapath/_native$EXT_SUFFIX"
echo "building $SO from $SRC"
gcc -shared -fPIC -g -O1 -fno-omit-frame-pointer \
  -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Wall -Wno-missing-field-initializers -I"$INCLUDE" \
  "$SRC" -o "$SO" -lcrypto

# The interpreter is not sanitized, so the ASan runtime must be loaded before anything else.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so)${LD_PRELOAD:+:$LD_PRELOAD}"
export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"
# Every Python object from malloc: pymalloc's arenas would hide overflows of small objects
# (the frames and packets the harnesses hand over) from ASan's redzones.
export PYTHONMALLOC=malloc
# detect_leaks=0: CPython never frees its interned strings, static types and module state,
# and the extension keeps its fetched EVP_CIPHER for the process's life, so LeakSanitizer at
# exit reports thousands of "leaks" that are not bugs (and a real per-call leak of ours
# could not be told apart from them). Leaks are not what this run looks for.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

"$PY" - "$WORK" <<'EOF'
import sys
from wiretun import datapath
from wiretun.datapath import _native
assert _native.__file__.startswith(sys.argv[1] + "/"), f"imported {_native.__file__}, not the sanitized build"
assert datapath.NATIVE is not None
print(f"sanitized extension: {_native.__file__}")
EOF

mkdir -p "$CRASH_DIR"
LOG="$CRASH_DIR/fuzz.log"
echo "fuzz.py $* (log: $LOG)"
start=$(date +%s)
set +e
nice -n 10 "$PY" "$ROOT/scripts/fuzz.py" --crash-dir "$CRASH_DIR" \
  --last-input "$CRASH_DIR/last-input" "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
echo "wall: $(( $(date +%s) - start )) s, exit status $rc"
if grep -qE "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer" "$LOG"; then
  name="$(cat "$CRASH_DIR/last-input.harness" 2>/dev/null || echo '?')"
  keep="$CRASH_DIR/$name-$(sha256sum "$CRASH_DIR/last-input" | cut -c1-16)"
  cp "$CRASH_DIR/last-input" "$keep"
  echo "SANITIZER FINDING in harness $name, on input $keep; replay it with:"
  echo "  ${NATIVE_SRC:+NATIVE_SRC=$SRC }$0 --only $name --replay $keep"
  [ "$rc" -ne 0 ] || rc=1
fi
if [ "$rc" -ne 0 ]; then
  echo "FAILED: findings above" >&2
  exit "$rc"
fi
echo "OK: no findings"
