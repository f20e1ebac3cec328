#!/usr/bin/env bash
# Mutation testing of the security-critical modules with mutmut (configured in setup.cfg [mutmut]).
# Not part of CI: a full run takes minutes per module on two cores. See README, "Mutation testing".
#
#   tools/mutate.sh                      every configured module (identity, claims, security, config, throttle)
#   tools/mutate.sh identity claims      only these modules
#   tools/mutate.sh --results            the surviving mutants of the last run (mutmut results)
#   tools/mutate.sh --show NAME          the diff of one mutant (mutmut show NAME)
#
# Runs on SQLite only (PORTAL_TEST_* are unset for it): each mutant runs, in a forked copy of one
# pytest process, only the tests that called the mutated function, so a module takes minutes.
# Results are kept in mutants/ and reused: a second run tests only mutants of changed functions.
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

modules=("$@")
[[ ${#modules[@]} -gt 0 ]] || modules=(identity claims security config throttle)
patterns=()
for module in "${modules[@]}"; do
  [[ -f portal/$module.py ]] || { echo "no module portal/$module.py" >&2; exit 2; }
  patterns+=("portal.$module.*")
done

# Two children: the machine has two cores, shared with others.
"${mutmut[@]}" run --max-children "${MUTATE_CHILDREN:-2}" "${patterns[@]}" || true

# One line per module from mutmut's own results: killed (incl. timeouts) out of all tested.
"$venv/bin/python" - "${modules[@]}" <<'PY'
import json, sys
from pathlib import Path

for module in sys.argv[1:]:
    meta = Path("mutants/portal") / f"{module}.py.meta"
    if not meta.exists():
        print(f"{module}: no results")
        continue
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    tested = {k: v for k, v in codes.items() if v is not None}
    survived = sorted(k for k, v in tested.items() if v == 0)
    killed = len(tested) - len(survived)
    score = 100 * killed / len(tested) if tested else 0.0
    print(f"{module}: {killed}/{len(tested)} killed ({score:.1f} %), {len(codes) - len(tested)} not run")
    for name in survived:
        print(f"  survived: {name}")
PY
