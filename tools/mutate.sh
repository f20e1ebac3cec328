#!/usr/bin/env bash
# Mutation testing of the security-critical modules with mutmut (configured in setup.cfg [mutmut]).
# Not part of CI: a full run takes minutes per module on two cores. See README, "Mutation testing".
#
#   tools/mutate.sh                      every configured module (identity, claims, security, config, throttle)
#   tools/mutate.sh identity claims      only these modules (all their mutants, afresh)
#   tools/mutate.sh --survivors [MODULE...]  only the mutants that survived the last run (after new tests)
#   tools/mutate.sh --results            the surviving mutants of the last run (mutmut results)
#   tools/mutate.sh --show NAME          the diff of one mutant (mutmut show NAME)
#
# Runs on SQLite only (PORTAL_TEST_* are unset for it): each mutant runs, in a forked copy of one
# pytest process, only the tests that called the mutated function, so a module takes minutes.
# Prints "module: killed/total (score %)" for each module, then the survivors.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PORTAL_VENV:-.venv}
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/python" -c "import mutmut, pytest_timeout" 2>/dev/null || "$venv/bin/python" -m pip install --quiet -e ".[test,mutation]"
unset PORTAL_TEST_POSTGRES_URL PORTAL_TEST_REDIS_URL
mutmut=("$venv/bin/mutmut")

case ${1:-} in
  --results) exec "${mutmut[@]}" results ;;
  --show) exec "${mutmut[@]}" show "$2" ;;
esac

survivors=false
if [[ ${1:-} == --survivors ]]; then survivors=true; shift; fi
modules=("$@")
[[ ${#modules[@]} -gt 0 ]] || modules=(identity claims security config throttle)
patterns=()
for module in "${modules[@]}"; do
  [[ -f portal/$module.py ]] || { echo "no module portal/$module.py" >&2; exit 2; }
  if $survivors; then
    meta=mutants/portal/$module.py.meta
    [[ -f $meta ]] || continue
    mapfile -t -O "${#patterns[@]}" patterns < <("$venv/bin/python" -c \
      'import json, sys; print("\n".join(k for k, v in json.load(open(sys.argv[1]))["exit_code_by_key"].items() if v == 0))' "$meta")
  else
    patterns+=("portal.$module.*")
  fi
done
[[ ${#patterns[@]} -gt 0 ]] || { echo "nothing to run"; exit 0; }
# A full run maps tests to functions afresh: mutmut keeps the old map for functions it thinks
# unchanged, and after a rewrite (new functions) that map sent their mutants to too few tests.
$survivors || rm -f mutants/mutmut-stats.json

# Two children: the machine has two cores, shared with others.
"${mutmut[@]}" run --max-children "${MUTATE_CHILDREN:-2}" "${patterns[@]}" || true

# One line per module, in mutmut's own terms: the score is killed (timeouts included) out of all
# mutants checked; "no tests" mutants (no selected test calls the function) count against it.
"$venv/bin/python" - "${modules[@]}" <<'PY'
import json, sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

for module in sys.argv[1:]:
    meta = Path("mutants/portal") / f"{module}.py.meta"
    if not meta.exists():
        print(f"{module}: no results")
        continue
    status = {k: status_by_exit_code[v] for k, v in json.loads(meta.read_text())["exit_code_by_key"].items()}
    counts = Counter(status.values())
    checked = len(status) - counts["not checked"]
    killed = counts["killed"] + counts["timeout"]
    score = 100 * killed / checked if checked else 0.0
    others = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in ("killed", "timeout"))
    print(f"{module}: {killed}/{checked} killed ({score:.1f} %); {others}")
    for name, what in sorted(status.items()):
        if what not in ("killed", "timeout", "not checked"):
            print(f"  {what}: {name}")
PY
