#!/usr/bin/env bash
# A quiet-machine before/after of the four wall-clock benches, alternating the two trees.
#
#   bench/quiet_pairs.sh [--dry-run] BEFORE_TREE AFTER_TREE OUTDIR [PAIRS]
#
# Each tree is a checkout with its own .venv (python3 -m venv .venv && .venv/bin/pip install -e
# ".[test,mutation,bench]"). For each of PAIRS pairs (default 2), each bench runs in the before
# tree, then at once in the after tree, with that tree's own .venv/bin/python, so that drift on the
# machine hits both sides alike: verify_bench.py --floor, api_bench.py --floor, pages_bench.py,
# verify_bench.py --whole-visit (about 16 minutes a pair). Each output goes to
# OUTDIR/NN-SCRIPT-SIDE.txt; at the end the RATIO, BUDGET and FLOOR lines and the machine's
# "other processes" lines (which must stay <= 0.1 of the cores) of every run are printed.
#
# Wall-clock ratios mean nothing on a shared machine: the script refuses to start (exit 2) when the
# 1-minute load average is above QUIET_MAX_LOAD (default 0.5). --dry-run prints the commands only.
set -euo pipefail

usage() {
    echo "usage: $0 [--dry-run] BEFORE_TREE AFTER_TREE OUTDIR [PAIRS]" >&2
    exit 2
}

dry_run=false
args=()
for arg in "$@"; do
    case $arg in
        --dry-run) dry_run=true ;;
        -h | --help) usage ;;
        *) args+=("$arg") ;;
    esac
done
[[ ${#args[@]} -eq 3 || ${#args[@]} -eq 4 ]] || usage
before=${args[0]}
after=${args[1]}
outdir=${args[2]}
pairs=${args[3]:-2}
[[ $pairs =~ ^[1-9][0-9]*$ ]] || usage

# name of the output, then the bench's command line (run from the tree's root)
benches=(
    "verify-floor|bench/verify_bench.py --floor"
    "api-floor|bench/api_bench.py --floor"
    "pages|bench/pages_bench.py"
    "verify-whole-visit|bench/verify_bench.py --whole-visit"
)

for tree in "$before" "$after"; do
    if [[ ! -x $tree/.venv/bin/python ]]; then
        echo "$tree: no .venv/bin/python (a checkout with its own venv is needed)" >&2
        exit 2
    fi
    for bench in "${benches[@]}"; do
        command=${bench#*|}
        script=${command%% *}
        if [[ ! -f $tree/$script ]]; then
            echo "$tree: no $script" >&2
            exit 2
        fi
    done
done

max_load=${QUIET_MAX_LOAD:-0.5}
read -r load _ </proc/loadavg
if awk -v now="$load" -v max="$max_load" 'BEGIN { exit !(now > max) }'; then
    if $dry_run; then
        echo "# the 1-minute load average is $load (> $max_load): a real run would refuse to start"
    else
        echo "the 1-minute load average is $load (> $max_load): not a quiet machine, not started" >&2
        exit 2
    fi
fi

$dry_run || mkdir -p "$outdir"
outputs=()
statuses=()
n=0
for ((pair = 1; pair <= pairs; pair++)); do
    for bench in "${benches[@]}"; do
        name=${bench%%|*}
        read -r -a command <<<"${bench#*|}"
        for side in before after; do
            tree=$before
            [[ $side == after ]] && tree=$after
            n=$((n + 1))
            out=$outdir/$(printf '%02d' "$n")-$name-$side.txt
            if $dry_run; then
                printf '(cd %q && .venv/bin/python' "$tree"
                printf ' %q' "${command[@]}"
                printf ') > %q 2>&1\n' "$out"
                continue
            fi
            echo "$(date -u +%H:%M:%S) pair $pair/$pairs: $name, $side ($tree) -> $out"
            status=0
            (cd "$tree" && .venv/bin/python "${command[@]}") >"$out" 2>&1 || status=$?
            outputs+=("$out")
            statuses+=("$status")
        done
    done
done
$dry_run && exit 0

echo
echo "summary (exit 1: a target missed or a budget spent; other: the bench failed, see its output)"
for i in "${!outputs[@]}"; do
    echo "== ${outputs[$i]} (exit ${statuses[$i]})"
    grep -E '^(RATIO|BUDGET|FLOOR) |other processes' "${outputs[$i]}" || echo "   (none of the lines: see the output)"
done
