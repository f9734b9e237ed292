#!/usr/bin/env bash
# Runs the whole test suite under AddressSanitizer, then under ThreadSanitizer, each build in a
# scratch directory of its own (.build-asan, .build-tsan) so neither disturbs the plain build.
# Any sanitizer report fails the run: ASan stops at the first error (and LeakSanitizer reports
# at exit), and TSAN_OPTIONS=halt_on_error=1 makes the first data race abort the test process.
#
#   scripts/sanitize.sh                 both, AddressSanitizer first
#   scripts/sanitize.sh thread          one of them
#   scripts/sanitize.sh address --filter LineScanner    (arguments after the first go to swift test)
#
# The tests see STATSRELAY_SANITIZER=address or thread: the few that cannot run under one skip
# under it, each saying why (Tests/*/SanitizerSupport.swift).
# Prints how long each build and each test run took.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh

sanitizers=(address thread)
if [ $# -gt 0 ]; then
    case "$1" in
        address | thread) sanitizers=("$1"); shift ;;
    esac
fi

timings=()
for sanitizer in "${sanitizers[@]}"; do
    case "$sanitizer" in
        address) scratch=.build-asan ;;
        thread) scratch=.build-tsan ;;
    esac
    export STATSRELAY_SANITIZER=$sanitizer
    # Sanitizers abort at the first report; symbolized stacks in the log.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=0}
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
    # Swift's backtracer would read the stack of a crashed test under the sanitizer and raise
    # reports of its own; the sanitizer prints the stack.
    export SWIFT_BACKTRACE=enable=no
    echo "== $sanitizer: build ($scratch)"
    start=$SECONDS
    swift build --build-tests --sanitize="$sanitizer" --scratch-path "$scratch"
    built=$((SECONDS - start))
    echo "== $sanitizer: test"
    start=$SECONDS
    swift test --skip-build --sanitize="$sanitizer" --scratch-path "$scratch" "$@"
    tested=$((SECONDS - start))
    timings+=("$sanitizer: build ${built}s, tests ${tested}s")
done
printf '%s\n' "${timings[@]}"
