"""Activation-code claims on PostgreSQL under 32 concurrent clients, then an exactly-once audit.

Setup (private schema on ``--database-url``, dropped afterwards): ``portal db upgrade``; patients
inserted in bulk SQL (claims need only the rows, not their Argon2 digests); the code pool through
the real ``portal generate-codes`` + ``portal import-codes`` (sealed with AES-GCM).

Phases, each thread with its own SQLAlchemy Session calling portal.claims.claim_code:
1. 1 client, distinct patients            -> claims/s (the reference)
2. 32 clients, distinct patients           -> claims/s
3. race: 32 clients all claiming for the same 300 patients, in different orders, with only 250
   codes left -> every patient gets one code however many times it is asked, the pool runs dry
   cleanly (PoolEmpty), nothing is handed out twice.

Audit: no code went out to two patients (returned values and the table), no patient holds two
codes (the table), every value returned equals the patient's row decrypted, no claimed row without
a patient that was told about it. Prints PASS/FAIL; exits 1 on FAIL.

RATIO = claims/s with 32 clients / claims/s with 1 client (how far the pool scales with concurrency).

    .venv/bin/python bench/claims_bench.py
    .venv/bin/python bench/claims_bench.py --full
    .venv/bin/python bench/claims_bench.py --database-url postgresql+psycopg://user@host/db
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import benchlib as b


class Claimer:
    def __init__(self, engine, cipher) -> None:  # type: ignore[no-untyped-def]
        self.engine, self.cipher = engine, cipher
        self.lock = threading.Lock()
        self.returned: dict[int, set[str]] = defaultdict(set)  # patient id -> codes returned to it
        self.outcomes: Counter[str] = Counter()
        self.latencies: list[float] = []  # seconds from asking to holding a code, retries included
        self.stop = threading.Event()  # set on Ctrl+C: the client threads finish their current claim only

    def run(self, assignments: list[list[int]], ready: Callable[[], object] | None = None, warmup: int = 0) -> float:
        """One thread per list of patient ids; returns wall seconds from the common start.

        Each thread first claims for its list's first ``warmup`` people, untimed (its connection
        opened and its backend's caches filled, as in a running server), then waits for the
        others; ``ready`` is called once they all wait, before they are let go (another process's
        clients can be lined up to start together with these)."""
        barrier = threading.Barrier(len(assignments) + 1)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=self._client, args=(ids, warmup, barrier, errors), daemon=True)
            for ids in assignments
        ]
        for thread in threads:
            thread.start()
        try:
            if ready is not None:
                ready()
            barrier.wait()
            began = time.perf_counter()
            for thread in threads:
                thread.join()
        except BaseException:
            self.stop.set()
            barrier.abort()
            for thread in threads:
                thread.join(10)
            raise
        elapsed = time.perf_counter() - began
        if errors:
            raise errors[0]
        return elapsed

    def _client(self, ids: list[int], warmup: int, barrier: threading.Barrier, errors: list[BaseException]) -> None:
        from sqlalchemy.orm import Session

        mine: dict[int, set[str]] = defaultdict(set)
        outcomes: Counter[str] = Counter()
        latencies: list[float] = []
        try:
            with Session(self.engine) as session:
                for patient_id in ids[:warmup]:
                    self._claim(session, patient_id, mine, outcomes, [])
                barrier.wait()
                for patient_id in ids[warmup:]:
                    if self.stop.is_set():
                        break
                    self._claim(session, patient_id, mine, outcomes, latencies)
        except BaseException as error:
            errors.append(error)
        with self.lock:
            for patient_id, codes in mine.items():
                self.returned[patient_id] |= codes
            self.outcomes.update(outcomes)
            self.latencies += latencies

    def _claim(self, session, patient_id: int, mine, outcomes, latencies: list[float]) -> None:  # type: ignore[no-untyped-def]
        """One person's claim as a person makes it: retried on PoolBusy (it says retrying is safe)."""
        from portal.claims import PoolBusy, PoolEmpty, claim_code
        from portal.models import Patient

        began = time.perf_counter()
        for _attempt in range(3):
            try:
                patient = session.get_one(Patient, patient_id)
                mine[patient_id].add(claim_code(session, self.cipher, patient).code)
                latencies.append(time.perf_counter() - began)
                outcomes["claimed"] += 1
                return
            except PoolEmpty:
                outcomes["pool empty"] += 1
                return
            except PoolBusy:
                outcomes["pool busy (retried)"] += 1
            finally:
                session.rollback()


def audit(engine, cipher, claimer: Claimer) -> list[str]:  # type: ignore[no-untyped-def]
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from portal.models import ActivationCode

    problems = []
    with Session(engine) as session:
        doubles = session.execute(
            sa.select(ActivationCode.patient_id, sa.func.count())
            .where(ActivationCode.patient_id.is_not(None))
            .group_by(ActivationCode.patient_id)
            .having(sa.func.count() > 1)
        ).all()
        if doubles:
            problems.append(f"{len(doubles)} patients hold two or more codes in the table")
        held = {
            row.patient_id: cipher.open(row)
            for row in session.scalars(sa.select(ActivationCode).where(ActivationCode.patient_id.is_not(None)))
        }
    several = {p: c for p, c in claimer.returned.items() if len(c) > 1}
    if several:
        problems.append(f"{len(several)} patients were told two different codes")
    told = Counter(code for codes in claimer.returned.values() for code in codes)
    twice = [code for code, n in told.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} codes were handed to two different patients")
    mismatched = [p for p, codes in claimer.returned.items() if codes and held.get(p) not in codes]
    if mismatched:
        problems.append(f"{len(mismatched)} patients were told a code that is not their row in the table")
    silent = [p for p in held if p not in claimer.returned]
    if silent:
        problems.append(f"{len(silent)} codes are claimed for patients who were never told them (burnt)")
    if len(set(held.values())) != len(held):
        problems.append("the table maps one code value to two rows")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=b.DEFAULT_PG_URL, help="PostgreSQL URL (a private schema is used)")
    parser.add_argument("--full", action="store_true", help="2,000 single-client and 20,000 concurrent claims")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--single", type=int, help="claims of phase 1 (default 500)")
    parser.add_argument("--concurrent", type=int, help="claims of phase 2 (default 4,000)")
    parser.add_argument("--race", type=int, default=300, help="patients of phase 3")
    parser.add_argument("--race-codes", type=int, default=250, help="codes left for phase 3")
    args = parser.parse_args()
    single = args.single or (2_000 if args.full else 500)
    concurrent = args.concurrent or (20_000 if args.full else 4_000)

    b.say(f"claims_bench  {b.machine_line()}")
    problem = b.postgres_reachable(args.database_url)
    if problem:
        b.say(f"FAIL: PostgreSQL at --database-url is unreachable ({problem})")
        return 1
    import sqlalchemy as sa

    from portal.claims import CodeCipher, pool_status
    from portal.config import decode_key
    from portal.identity import Keyring

    with b.Bench() as bench:
        tmp = bench.tempdir()
        url = bench.postgres_schema(args.database_url)
        env = b.portal_env(bench, url)
        b.migrate(env)
        patients = single + concurrent + args.race
        codes = single + concurrent + args.race_codes
        b.fill_patients(url, patients)
        b.portal(env, "generate-codes", str(codes), "--seed", "4", "--out", str(tmp / "codes.csv"))
        b.portal(env, "import-codes", str(tmp / "codes.csv"))
        b.say(f"PostgreSQL private schema: {patients:,} patients (bulk SQL), {codes:,} codes (portal import-codes)")

        engine = sa.create_engine(url, hide_parameters=True, pool_size=args.clients + 2, max_overflow=0)
        bench.callback(engine.dispose)
        cipher = CodeCipher(Keyring(1, {1: decode_key(bench.keys["CODE_KEY"], "CODE_KEY")}))
        with engine.connect() as connection:
            ids = list(connection.scalars(sa.text("SELECT id FROM patients ORDER BY id")))
        claimer = Claimer(engine, cipher)
        rng = random.Random(9)

        one = claimer.run([ids[:single]])
        rate1 = single / one
        b.say(f"phase 1: 1 client, {single:,} distinct patients: {one:.1f} s -> {rate1:,.0f} claims/s")
        part = ids[single : single + concurrent]
        cpu_before = sum(os.times()[:2])
        many = claimer.run([part[i :: args.clients] for i in range(args.clients)])
        client_cores = (sum(os.times()[:2]) - cpu_before) / many
        rate32 = concurrent / many
        b.say(
            f"phase 2: {args.clients} clients, {concurrent:,} distinct patients: {many:.1f} s"
            f" -> {rate32:,.0f} claims/s; this Python process used {client_cores:.2f} cores (one GIL)"
        )
        before = dict(claimer.outcomes)
        racers = ids[single + concurrent :]
        race = claimer.run([rng.sample(racers, len(racers)) for _ in range(args.clients)])
        race_outcomes = {k: v - before.get(k, 0) for k, v in claimer.outcomes.items() if v - before.get(k, 0)}
        got = sum(1 for p in racers if claimer.returned.get(p))
        b.say(
            f"phase 3: {args.clients} clients racing for the same {len(racers)} patients with {args.race_codes} codes"
            f" left: {race:.1f} s; outcomes {race_outcomes}; {got} patients hold a code"
        )
        b.say(f"all phases: {dict(claimer.outcomes)}")

        problems = audit(engine, cipher, claimer)
        everyone = all(claimer.returned.get(p) for p in ids[: single + concurrent])
        if not everyone:
            problems.append("a patient of phases 1-2 got no code although the pool had free codes")
        if got != min(len(racers), args.race_codes):
            problems.append(f"phase 3 gave codes to {got} patients, expected {min(len(racers), args.race_codes)}")
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            status = pool_status(session)
        b.say(f"pool after: {status.total:,} codes, {status.claimed:,} claimed, {status.available:,} available")
        if status.claimed != len([p for p, c in claimer.returned.items() if c]):
            problems.append("claimed rows and patients told a code differ in number")
        b.say(
            f"RATIO claims/s {args.clients} clients / 1 client = {rate32 / rate1:.2f}"
            f"  ({rate32:,.0f} claims/s vs {rate1:,.0f} claims/s; no target, scaling)"
        )
        for line in problems:
            b.say(f"  problem: {line}")
        b.say(
            f"{'PASS' if not problems else 'FAIL'}: no code went out twice, no patient holds two codes"
            f" ({len([p for p, c in claimer.returned.items() if c]):,} patients,"
            " each told exactly the code in their row)"
        )
        b.say(bench.cpu.line())
    return 0 if not problems else 1


if __name__ == "__main__":
    b.run_main(main)
