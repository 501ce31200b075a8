#!/usr/bin/env bash
# Fuzzes the GGUF parser and model loader under AddressSanitizer + UndefinedBehaviorSanitizer.
#   tests/fuzz/run.sh [SECONDS] [BUILD_DIR]      (default 60 s, build/fuzz-<compiler>)
# With clang it builds a libFuzzer target (coverage-guided); otherwise gcc with tests/fuzz/driver.c
# (random mutations of the seeds). New inputs go to a scratch folder. Exits non-zero on any crash, leak or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
cc=${CC:-}
if [ -z "$cc" ] && command -v clang >/dev/null; then cc=clang; fi
cc=${cc:-gcc}
# one build folder per compiler: changing a configured folder's compiler makes CMake drop the options
build=${2:-build/fuzz-$(basename "$cc")}
mkdir -p "$(dirname "$build")"
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_C_COMPILER="$cc" -DENGINE_FUZZ=ON -DENGINE_PYTHON=OFF \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; exit 1; }
cmake --build "$build" --target restkv-fuzz > "$build.build.log" 2>&1 || { cat "$build.build.log"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus"
# the seeds are generated (no model files in git): tests/fuzz/make_seeds.py, needs the gguf package
python3 tests/fuzz/make_seeds.py --out "$work/seeds" > /dev/null
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "fuzz: $("$cc" --version | head -1), $secs s, $(ls "$work/seeds" | wc -l) seeds from tests/fuzz/make_seeds.py"
# -rss_limit_mb: the loader allocates from sizes it read; a seed that makes it ask for gigabytes is a bug
"$build/restkv-fuzz" -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$work/" "$work/corpus" "$work/seeds" 2>&1 | tail -25
status=${PIPESTATUS[0]}
if ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* >/dev/null 2>&1 || [ -f crash-input.gguf ]; then
    mkdir -p fuzz-artifacts && cp "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* crash-input.gguf \
        fuzz-artifacts/ 2>/dev/null || true
    echo "fuzz: FAILED, inputs kept in fuzz-artifacts/"
    exit 1
fi
exit "$status"
