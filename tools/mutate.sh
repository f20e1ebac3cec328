#!/usr/bin/env bash
# Mutation testing of the security-critical modules with mutmut (configured in setup.cfg [mutmut]).
# Not part of CI: a full run takes minutes per module on two cores. See README, "Mutation testing".
#
#   tools/mutate.sh                      every configured module, one after the other (hours)
#   tools/mutate.sh identity api/auth    only these modules (all their mutants, afresh); a module is
#                                        its path under portal/ without .py
#   tools/mutate.sh --survivors [MODULE...]  only the mutants that survived the last run, or that no test
#                                        called (after new tests)
#   tools/mutate.sh --functions GLOB MODULE...  only the mutants of the functions GLOB names, in
#                                        mutmut's spelling: 'x_events*', 'xǁGroupCommitǁ*'
#   MUTATE_TESTS="tests/a.py tests/b.py" tools/mutate.sh MODULE  against these tests instead of the
#                                        module's own (a wider selection for one run)
#   tools/mutate.sh --results            the surviving mutants of the last run (mutmut results)
#   tools/mutate.sh --show NAME          the diff of one mutant (mutmut show NAME)
#
# Runs on SQLite only (PORTAL_TEST_* are unset for it). Each module is run on its own, against its
# own test files (below): the tests are run once to learn which of them call which function, then
# each mutant runs, in a forked copy of that pytest process, only the tests that called the
# mutated function. Prints "module: killed/total (score %)" for each module, then the survivors.
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

# The test files (and pytest options) each module's mutants are checked against: the module's own
# tests, in-process (no live servers: a subprocess would load the unmutated package). A module not
# listed here is checked against the whole selection of setup.cfg [mutmut].
declare -A own_tests=(
  [identity]="tests/test_identity.py tests/test_properties.py tests/test_keys.py"
  [claims]="tests/test_claims.py tests/test_keys.py"
  [security]="tests/test_hardening.py tests/test_public.py"
  [config]="tests/test_config.py"
  [throttle]="tests/test_throttle.py"
  [network]="tests/test_throttle.py tests/test_hardening.py tests/test_audit.py --deselect tests/test_audit.py::test_concurrent_writers_in_several_processes_keep_one_unbroken_chain"
  [hashing_slots]="tests/test_identity.py"
  [staff]="tests/test_agent.py tests/test_console.py tests/test_keys.py -k 'not live_server'"
  [audit]="tests/test_audit.py --deselect tests/test_audit.py::test_concurrent_writers_in_several_processes_keep_one_unbroken_chain
    tests/test_agent.py::test_console_verifications_have_their_own_budgets
    tests/test_agent.py::test_the_audit_trail_filters_and_exports_and_the_export_is_recorded
    tests/test_agent.py::test_the_audit_trails_days_are_whole_and_inclusive_and_other_actors_show_as_they_are
    tests/test_console.py::test_the_audit_trail_names_staff_by_username_and_role
    tests/test_console.py::test_every_exported_cell_is_safe_for_spreadsheets"
  [ops]="tests/test_ops.py -k 'not two_workers'"
  [logs]="tests/test_logs.py"
  [sealing]="tests/test_sealing.py tests/test_keys.py"
  [verification]="tests/test_public.py tests/test_throttle.py tests/test_stolen_records.py
    tests/test_api.py::test_a_verified_person_gets_their_exposure_and_a_claim_token"
  [alerts]="tests/test_alerts.py"
  [retention]="tests/test_purge.py"
  [letters]="tests/test_agent.py tests/test_import.py tests/test_sealing.py"
  # Events are raised by every surface: besides their own two files, the tests that read what an
  # event leaves (the actor, head and fields of its row, the alerts it raises, the step-up), not the
  # hundreds of others that merely raise events (each surviving mutant of `record` would run them all).
  # The alerts' key prefix is checked on Redis only (test_throttle.py, planted by hand).
  [events]="tests/test_events.py tests/test_logs.py
    tests/test_audit.py::test_each_event_publishes_the_new_head_in_its_log_line_and_metrics
    tests/test_audit.py::test_an_event_the_database_refuses_fails_alone_and_its_batch_mates_are_written
    tests/test_audit.py::test_an_alert_goes_out_even_when_its_events_row_cannot_be_written
    tests/test_audit.py::test_the_public_site_leaves_its_trail_under_a_session_pseudonym
    tests/test_audit.py::test_every_link_is_the_documented_hmac_that_an_auditor_can_recompute
    tests/test_audit.py::test_threads_of_one_process_share_commits_and_keep_one_unbroken_chain
    tests/test_agent.py::test_the_audit_trails_days_are_whole_and_inclusive_and_other_actors_show_as_they_are
    tests/test_alerts.py::test_a_live_alert_is_logged_counted_and_raised_once
    tests/test_alerts.py::test_a_thief_through_the_site_is_logged_counted_and_shown
    tests/test_stolen_records.py::test_on_alert_a_success_side_alert_makes_every_claim_ask_for_the_letter
    tests/test_stolen_records.py::test_on_alert_a_step_up_that_cannot_be_read_asks_for_the_letter
    tests/test_stolen_records.py::test_an_agent_account_verifying_many_callers_raises_an_alert_that_names_it
    tests/test_stolen_records.py::test_claims_spread_over_many_networks_raise_the_site_wide_alert_against_the_usual_claims
    tests/test_stolen_records.py::test_with_attack_detection_down_the_attempt_is_answered_recorded_and_the_gap_logged
    tests/test_throttle.py::test_every_attempt_is_recorded_with_who_made_it_and_from_where"
)
# Without the fuzzing of every body (three quarters of the file's time, run again by every surviving
# mutant); it finds answers of 500, which the other tests of the file look for status by status.
for api in api/auth api/errors api/openapi api/validation api/views partner_keys; do
  own_tests[$api]="tests/test_api.py --deselect tests/test_api.py::test_no_input_gets_a_500[sqlite]"
done
# The contract's document is also read by its reference page's tests, which check its patterns.
own_tests[api/openapi]+=" tests/test_api_reference.py"
# The console's pages, by who uses them, without the one test that needs a live server.
console=(agent/auth agent/blueprint agent/account agent/calls agent/lost_letters agent/supervisor
  agent/staff_accounts agent/dashboard agent/forms)
for page in "${console[@]}"; do
  own_tests[$page]="tests/test_agent.py tests/test_console.py -k 'not live_server'"
done
# The access rules run on every console request, so each surviving mutant of them ran every console
# test (a minute or more each on two busy cores): they are checked against the access, login and
# session tests.
own_tests[agent/auth]="tests/test_agent.py -k 'console_route or 403 or factor or disabled or totp or login or session or network or switched or code_of_other or full_call'"
# A caller's code reported used by someone else (the reissue and its budget): tests/test_recovery.py.
own_tests[agent/calls]="tests/test_agent.py tests/test_console.py tests/test_recovery.py -k 'not live_server'"
# The dashboard's own tests are in tests/test_dashboard.py; the pool's warnings in tests/test_console.py.
own_tests[agent/dashboard]="tests/test_dashboard.py tests/test_console.py -k 'not live_server'"
# The login budgets are counted at every sign-in, in nearly every console test, so each surviving
# mutant of them ran all of them: they are checked against the login, password, session and sign-out
# tests (and the home page's).
own_tests[agent/account]="tests/test_agent.py tests/test_console.py -k 'not live_server and (login or password or logout or factor or session or disabled or totp or code_of_other or top_bar or approval or throttled)'"
all_modules=(identity hashing_slots claims security config throttle network api/auth api/errors api/openapi
  api/validation api/views partner_keys staff "${console[@]}" audit verification alerts retention letters
  sealing ops logs events)

survivors=false functions='*'
if [[ ${1:-} == --survivors ]]; then survivors=true; shift; fi
if [[ ${1:-} == --functions ]]; then functions=$2; shift 2; fi
modules=("$@")
[[ ${#modules[@]} -gt 0 ]] || modules=("${all_modules[@]}")
for module in "${modules[@]}"; do
  [[ -f portal/$module.py ]] || { echo "no module portal/$module.py" >&2; exit 2; }
done

declare -A mapped=()  # the test selections mapped afresh in this run
run_module() {  # run_module MODULE: mutmut over one module's mutants, with its own tests
  local module=$1 tests=${MUTATE_TESTS:-${own_tests[$1]:-}} patterns=()
  # mutmut keeps one map of tests to functions (mutmut-stats.json) and, finding it made from
  # another selection of tests, forgets every module's results: each selection keeps its own map,
  # which the modules sharing it (the API's) share.
  local own_map=mutants/stats-$(printf '%s' "$tests" | sha256sum | cut -c1-12).json
  if $survivors; then
    local meta=mutants/portal/$module.py.meta
    [[ -f $meta ]] || return 0
    mapfile -t patterns < <("$venv/bin/python" -c \
      'import json, sys; print("\n".join(k for k, v in json.load(open(sys.argv[1]))["exit_code_by_key"].items() if v in (0, 5, 33)))' "$meta")
  else
    patterns=("portal.${module//\//.}.$functions")
    # A full run maps tests to functions afresh: mutmut keeps the old map for functions it thinks
    # unchanged, and after a rewrite (new functions) that map sent their mutants to too few tests.
    [[ -n ${mapped[$own_map]:-} ]] || rm -f "$own_map"
    mapped[$own_map]=1
  fi
  [[ ${#patterns[@]} -gt 0 && -n ${patterns[0]} ]] || return 0
  rm -f mutants/mutmut-stats.json
  [[ ! -f $own_map ]] || cp "$own_map" mutants/mutmut-stats.json
  # mutmut reads its test selection from setup.cfg only: this module's is set on its loaded
  # configuration before the run starts. Two children: the machine has two cores, shared. Every
  # test starts with the portal's caches empty (tools/fresh_caches.py).
  "$venv/bin/python" - "$tests" "${MUTATE_CHILDREN:-2}" "${patterns[@]}" <<'PY' || true
import shlex
import sys
from pathlib import Path

from mutmut.__main__ import cli
from mutmut.configuration import config

tests, children, *patterns = sys.argv[1:]
if tests:
    config().pytest_add_cli_args_test_selection[:] = shlex.split(tests)
sys.path.insert(0, str(Path("tools").resolve()))
config().pytest_add_cli_args.extend(["-p", "fresh_caches"])
cli(["run", "--max-children", children, *patterns])
PY
  [[ ! -f mutants/mutmut-stats.json ]] || cp mutants/mutmut-stats.json "$own_map"
}

for module in "${modules[@]}"; do
  run_module "$module"
done

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
