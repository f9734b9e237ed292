#!/usr/bin/env bash
# Runs every test: unit tests and the kernel tests on loopback (skipped, and reported, where
# io_uring is unavailable). Installs liburing-dev first if it is missing.
#
# A test that never returns would hold the run (and CI) until an outer limit, and Swift
# Testing's `.timeLimit` cannot end a test blocked in a system call. So a watchdog stops the
# test process after TEST_TIME_LIMIT seconds (default 1200; a whole run takes ~2.5 min on 2
# cores), with the processes it started. Where gdb is installed it first prints every thread's
# stack (the hung test's function is in one of them) and flushes the process's output, so the
# log's last "started" lines without their "passed" name the test too.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build --build-tests
limit=${TEST_TIME_LIMIT:-1200}
# How many test cases run at once (Swift Testing's bound, whose wait comes before a case's time
# limit starts). The kernel tests' bodies run on threads of their own (.onOwnThread,
# Tests/UringRelayKernelTests/OwnThreadTrait.swift) only when it is set: on Swift's shared pool,
# a body waited for a thread with its one-minute limit already running (14 tests over it in one
# run on a loaded 2-CPU host). This bound stands for the one the pool's size was.
export SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=${SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH:-$((3 * $(nproc)))}

# The processes below process $1, depth first (from /proc: procps may not be installed).
descendants() {
    local stat line fields child
    for stat in /proc/[0-9]*/stat; do
        read -r line <"$stat" 2>/dev/null || continue
        read -r -a fields <<<"${line##*) }"
        [[ ${fields[1]} == "$1" ]] || continue
        child=${stat#/proc/}
        child=${child%/stat}
        echo "$child"
        descendants "$child"
    done
}

watchdog() {
    local deadline=$((SECONDS + limit)) process started
    while ((SECONDS < deadline)); do sleep 2; done
    echo "scripts/test.sh: the tests ran past ${limit} s (TEST_TIME_LIMIT); stopping them" >&2
    for process in $(descendants $$); do
        grep -q 'PackageTests\.xctest' "/proc/$process/cmdline" 2>/dev/null || continue
        if command -v gdb >/dev/null; then
            echo "==== every thread's stack of the test process $process" >&2
            timeout 120 gdb -p "$process" -batch -ex 'info threads' -ex 'thread apply all bt 40' \
                -ex 'call (int) fflush(0)' </dev/null >&2 2>&1 || true
        fi
        # Stopped first, so it starts nothing more: the relays and clients it started would
        # outlive it, holding their ports.
        kill -STOP "$process" 2>/dev/null || true
        started=$(descendants "$process")
        kill -KILL "$process" $started 2>/dev/null || true
    done
}

watchdog </dev/null &
watching=$!
status=0
swift test --skip-build "$@" || status=$?
kill "$watching" 2>/dev/null || true
exit "$status"
