#!/usr/bin/env bash
# Builds tests/c/kernels_check.c (the cython set's C kernels, without Python) once per path and
# compiler this machine has, runs each, and says which ran. aarch64 builds run under qemu-user.
#   bash tests/c/check.sh            # every path and compiler available here
# Needs: gcc and/or clang; for aarch64, gcc-aarch64-linux-gnu (and clang) plus qemu-user.
set -u
cd "$(dirname "$0")/../.."
src=tests/c/kernels_check.c
inc=kernels/_cython
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failures=0 runs=0

x86_flags() {
    case $1 in
        avx512) echo "-mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma" ;;
        avx2) echo "-mavx2 -mfma" ;;
        generic) echo "" ;;
    esac
}
host_runs() {   # can this CPU run the path? (the kernels would SIGILL otherwise)
    case $1 in
        avx512) grep -q avx512bw /proc/cpuinfo && grep -q avx512vl /proc/cpuinfo ;;
        avx2) grep -q avx2 /proc/cpuinfo && grep -q fma /proc/cpuinfo ;;
        *) true ;;
    esac
}
run() {   # run NAME CMD...: a build and its run, reported on one line
    local name=$1; shift
    runs=$((runs + 1))
    if "$@" >"$out/log" 2>&1; then
        echo "ok    $name: $(tail -n 1 "$out/log")"
    else
        failures=$((failures + 1))
        echo "FAIL  $name"; sed 's/^/      /' "$out/log"
    fi
}

if [ "$(uname -m)" = x86_64 ]; then
    for cc in gcc clang; do
        command -v $cc >/dev/null || { echo "skip  $cc: not installed"; continue; }
        for path in avx512 avx2 generic; do
            host_runs $path || { echo "skip  $cc $path: this CPU cannot run it"; continue; }
            up=$(echo $path | tr a-z A-Z)
            run "$cc $path" bash -c "$cc -O2 -std=gnu11 -Wall -Werror -Wno-unknown-pragmas -Wno-unused-function $(x86_flags $path) \
                -DKERNELS_ISA_$up=1 -I$inc $src -o $out/$cc-$path -lm && $out/$cc-$path"
        done
    done
fi

# aarch64: cross-compiled, run under qemu-user (no ARM machine is at hand)
if command -v qemu-aarch64 >/dev/null; then
    for cc in aarch64-linux-gnu-gcc "clang --target=aarch64-linux-gnu"; do
        command -v ${cc%% *} >/dev/null || { echo "skip  $cc: not installed"; continue; }
        for path in neon generic; do
            up=$(echo $path | tr a-z A-Z)
            run "$cc $path (qemu)" bash -c "$cc -O2 -std=gnu11 -Wall -Werror -Wno-unknown-pragmas -Wno-unused-function \
                -DKERNELS_ISA_$up=1 -I$inc $src -o $out/arm-$path-${cc%% *} -lm \
                && qemu-aarch64 -L /usr/aarch64-linux-gnu $out/arm-$path-${cc%% *}"
        done
    done
else
    echo "skip  aarch64: qemu-aarch64 is not installed (Debian: qemu-user, gcc-aarch64-linux-gnu)"
fi

echo "$runs builds run, $failures failed"
[ "$failures" -eq 0 ] && [ "$runs" -gt 0 ]
