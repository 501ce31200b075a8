#!/usr/bin/env bash
# Runs the loader and API tests against a build of the C core with AddressSanitizer and
# UndefinedBehaviorSanitizer (the compiled module from build/asan, engine/ from the checkout).
#   tests/sanitize.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/asan
mkdir -p build
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_C_COMPILER=gcc -DENGINE_SANITIZE=ON -DENGINE_BACKEND_OPS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      > "$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; exit 1; }
cmake --build "$build" > "$build.build.log" 2>&1 || { cat "$build.build.log"; exit 1; }
# every backend operation against the reference, under the sanitizers
"$build/restkv-backend-ops" > "$build.backend_ops.log" 2>&1 || { cat "$build.backend_ops.log"; exit 1; }
tail -1 "$build.backend_ops.log"
# the sanitizer runtime must come first; Python's own allocations at exit are not ours to report
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export RESTKV_SANITIZE=1  # tests too slow under ASan skip themselves
export PYTHONPATH="$PWD/$build:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'PY'
import _restkv_ffi, os
assert os.path.dirname(_restkv_ffi.__file__).endswith("build/asan"), _restkv_ffi.__file__
PY
tests=(tests/test_malformed.py tests/test_fuzz_corpus.py tests/test_api.py tests/test_validation.py
       tests/test_eviction.py tests/test_shared_prefill.py tests/test_policies.py tests/test_soak.py
       tests/test_repack.py tests/test_gemm.py tests/test_threads.py tests/test_startup.py)
python3 -m pytest -q -p no:cacheprovider "${tests[@]}" "$@"
