#!/usr/bin/env bash
# Fuzzes the relay's parsers with libFuzzer: builds FuzzTesting/ (a package of its own, so that
# libFuzzer's main does not clash with the test runner's) in release with libFuzzer and
# AddressSanitizer, then for each target
#   1. replays every seed of its corpus and every crash kept in FuzzTesting/Crashes/<target>/,
#      each input whole, once: any failure fails the run;
#   2. fuzzes it for SECONDS (default 60) with the corpus and a dictionary, new inputs going to
#      FuzzTesting/.build/fuzz/<target>/corpus (kept between runs, never committed).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: FuzzLineScanner FuzzDatagramProcessor
#                                             FuzzDogStatsD FuzzBackendAddress FuzzConfigValues
#                                             FuzzConfigFile FuzzStreamLineFramer
#                                             FuzzTCPIngest (default: all)
#   FUZZ_SANITIZERS=fuzzer    without AddressSanitizer (faster; guard pages still catch reads
#                             past a datagram); default fuzzer,address
#   FUZZ_CONFIGURATION=debug  with the product's assert()s on (default release: in debug the
#                             send-slot pool checks every free slot on each release, which makes
#                             the processor target hundreds of times slower)
#
# The sanitizers go to swiftc as one -sanitize=fuzzer,address: SwiftPM's --sanitize=fuzzer
# --sanitize=address passes two -sanitize= options and swiftc keeps only the last, so the Swift
# code would get either no coverage instrumentation (libFuzzer then fuzzes blind) or no ASan.
# --sanitize=fuzzer is still given, for SwiftPM to link libFuzzer's main instead of the target's.
#
# Exit status 0 when nothing failed. A crash leaves its input in
# FuzzTesting/.build/fuzz/<target>/artifacts/; then (FuzzTesting/README.md):
#   cp that file FuzzTesting/Crashes/<target>/<what-it-shows>; add a test in
#   Tests/UringRelayTests reproducing it; fix the product; scripts/fuzz.sh 0 <target> replays it.
# Prints one summary line per target: target, seconds fuzzed (wall, CPU), executions, result.
set -euo pipefail
cd "$(dirname "$0")/../FuzzTesting"
# libFuzzer handles a crash itself (and ASan reports it); Swift's own backtracer would race it.
export SWIFT_BACKTRACE=enable=no

seconds=${1:-60}
shift || true
if [[ ! "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 64
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(FuzzLineScanner FuzzDatagramProcessor FuzzDogStatsD FuzzBackendAddress FuzzConfigValues FuzzConfigFile FuzzStreamLineFramer FuzzTCPIngest)
fi

build=(-c "${FUZZ_CONFIGURATION:-release}" --sanitize=fuzzer -Xswiftc "-sanitize=${FUZZ_SANITIZERS:-fuzzer,address}")
swift build "${build[@]}"
bin=$(swift build "${build[@]}" --show-bin-path)

# What each target reads: its corpus, its dictionary and the longest input to try. Datagrams
# stop at 8 KiB (the relay's default --max-datagram) for the processor, whose set-ups map
# send slots in proportion to the datagram; the scanner goes past 65 507-byte lines.
corpus_of() {
    case "$1" in
        FuzzLineScanner | FuzzDatagramProcessor) echo Corpus/Datagrams ;;
        FuzzDogStatsD) echo Corpus/DogStatsD ;;
        FuzzBackendAddress) echo Corpus/BackendAddresses ;;
        FuzzConfigValues) echo Corpus/ConfigValues ;;
        FuzzConfigFile) echo Corpus/ConfigFiles ;;
        FuzzStreamLineFramer) echo Corpus/Streams ;;
        FuzzTCPIngest) echo Corpus/TCPStreams ;;
        *) echo "unknown target $1" >&2; exit 64 ;;
    esac
}
dictionary_of() {
    case "$1" in
        FuzzLineScanner | FuzzDatagramProcessor | FuzzDogStatsD | FuzzStreamLineFramer | FuzzTCPIngest) echo Dictionaries/statsd.dict ;;
        FuzzConfigFile) echo Dictionaries/yaml.dict ;;
        *) echo Dictionaries/config.dict ;;
    esac
}
max_len_of() {
    case "$1" in
        FuzzLineScanner) echo 70000 ;;
        FuzzDatagramProcessor) echo 8192 ;;
        FuzzDogStatsD) echo 8193 ;;
        FuzzConfigFile) echo 4096 ;;
        FuzzStreamLineFramer | FuzzTCPIngest) echo 20000 ;;
        *) echo 256 ;;
    esac
}

failed=0
summary=()
for target in "${targets[@]}"; do
    corpus=$(corpus_of "$target")
    work=.build/fuzz/$target
    mkdir -p "$work/corpus" "$work/artifacts"

    inputs=("$corpus"/* )
    for kept in Crashes/"$target"/*; do [ -f "$kept" ] && [ "${kept##*/}" != README.md ] && inputs+=("$kept"); done
    echo "== $target: replaying ${#inputs[@]} inputs (corpus and Crashes/$target)"
    if ! "$bin/$target" -rss_limit_mb=4096 "${inputs[@]}" > "$work/replay.log" 2>&1; then
        tail -n 40 "$work/replay.log"
        echo "!! $target failed on a kept input (log: FuzzTesting/$work/replay.log)"
        summary+=("$target 0 0 0 replay-failed")
        failed=1
        continue
    fi
    [ "$seconds" -eq 0 ] && { summary+=("$target 0 0 0 replayed"); continue; }

    echo "== $target: fuzzing for ${seconds}s"
    status=0
    TIMEFORMAT='%R %U %S'
    { time "$bin/$target" -max_total_time="$seconds" -max_len="$(max_len_of "$target")" \
        -dict="$(dictionary_of "$target")" -artifact_prefix="$work/artifacts/" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 "$work/corpus" "$corpus" > "$work/fuzz.log" 2>&1; } 2> "$work/time" || status=$?
    read -r wall user system < "$work/time"
    cpu=$(awk -v u="$user" -v s="$system" 'BEGIN { printf "%.0f", u + s }')
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log" | tail -n 1)
    if [ "$status" -ne 0 ]; then
        grep -m 1 -A 30 -E "==ERROR|Fatal error|invariant broken|deadly signal" "$work/fuzz.log" || tail -n 40 "$work/fuzz.log"
        echo "!! $target crashed: input in FuzzTesting/$work/artifacts/ (log: FuzzTesting/$work/fuzz.log)"
        result=crash
        failed=1
    else
        result=ok
    fi
    summary+=("$target ${wall%.*} $cpu ${execs:-0} $result")
done

echo
printf '%-24s %8s %8s %12s  %s\n' target "wall s" "CPU s" executions result
for line in "${summary[@]}"; do
    # shellcheck disable=SC2086
    printf '%-24s %8s %8s %12s  %s\n' $line
done
exit "$failed"
