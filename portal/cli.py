"""The ``portal`` command: Flask's CLI plus database, import and demo commands."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import IO, NoReturn

import click
import segno
from flask import Flask, current_app
from flask.cli import ScriptInfo, with_appcontext
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from tqdm import tqdm
from werkzeug.serving import make_server

from portal import exposure, partner_keys, retention, schema, stats, synthetic
from portal.audit import Head, spreadsheet_safe
from portal.claims import pool_status, reseal_codes, revoked_since
from portal.config import write_development_secrets
from portal.events import Event, record
from portal.extensions import db
from portal.identity import format_reference
from portal.importer import (
    CODE_COLUMNS,
    CODE_OPTIONAL_COLUMNS,
    PATIENT_COLUMNS,
    ImportFileError,
    ImportReport,
    PatientImporter,
    import_codes,
    read_csv,
)
from portal.letters import LetterVault, export_requested
from portal.models import Staff
from portal.sandbox import NO_SSN_PERSON, PRACTICE, PRACTICES, SANDBOX_PEOPLE
from portal.sealing import RESEAL_BATCH, KeyVersionMissing
from portal.services import services
from portal.staff import (
    ROLES,
    StaffError,
    create_staff,
    disable_staff,
    enable_staff,
    find_staff,
    list_staff,
    reseal_totp_secrets,
    reset_mfa,
)
from portal.throttle import limit_store

EXIT_REJECTED = 1
EXIT_BAD_FILE = 2


def init_app(app: Flask) -> None:
    """The app's own commands; ``portal`` (and the tests' CLI runner) find them on ``app.cli``."""
    for command in (
        db_group,
        import_patients_command,
        import_codes_command,
        rotate_code_key_command,
        generate_patients_command,
        generate_codes_command,
        stats_command,
        purge_command,
        audit_group,
        letters_group,
        codes_group,
        create_staff_command,
        disable_staff_command,
        enable_staff_command,
        reset_staff_mfa_command,
        list_staff_command,
        create_api_key_command,
        list_api_keys_command,
        revoke_api_key_command,
    ):
        app.cli.add_command(command)


# --- Database ------------------------------------------------------------------------------------


@click.group("db")
def db_group() -> None:
    """Schema migrations (Alembic)."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Bring the database, new or old, to REVISION (default: the newest)."""
    schema.upgrade(db.engine, revision)
    click.echo(f"database at {revision}")


@db_group.command("downgrade")
@click.argument("revision")
@with_appcontext
def db_downgrade(revision: str) -> None:
    """Step the schema back to REVISION (for example -1)."""
    schema.downgrade(db.engine, revision)


@db_group.command("current")
@with_appcontext
def db_current() -> None:
    """Show the revision the database is at."""
    schema.current(db.engine)


# --- Imports -------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_csv(path: str) -> Iterator[IO[str]]:
    """A CSV file (or ``-`` for standard input), tolerant of a byte-order mark."""
    if path == "-":
        yield sys.stdin
        return
    try:
        stream = open(path, newline="", encoding="utf-8-sig")
    except OSError as error:
        click.echo(f"{path}: cannot open: {error.strerror}", err=True)
        sys.exit(EXIT_BAD_FILE)
    with stream:
        yield stream


def open_private(path: str) -> IO[str]:
    """A file for the operator's eyes only (0600), even when one by that name already existed:
    a letters file pairs record ids with the references that unlock a person's record."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    return open(descriptor, "w", newline="", encoding="utf-8")


def report_rejection(line: int, reason: str) -> None:
    click.echo(f"line {line}: rejected: {reason}", err=True)


class Progress:
    """Rows done, percent and time left on standard error (tqdm): on a terminal, or when asked."""

    def __init__(self, enabled: bool, total: int | None = None) -> None:
        self.bar = tqdm(
            total=total, unit=" rows", unit_scale=True, file=sys.stderr, disable=not enabled, smoothing=0.05
        )

    def __call__(self, report: ImportReport) -> None:
        self.bar.update(report.read - self.bar.n)

    def reject(self, line: int, reason: str) -> None:
        """A rejection printed above the bar rather than through it."""
        if self.bar.disable:
            report_rejection(line, reason)
        else:
            self.bar.write(f"line {line}: rejected: {reason}", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def count_rows(path: str) -> int | None:
    """Data rows in a CSV file (lines after the header), for the percentage; one quick pass of bytes."""
    if path == "-":
        return None
    with open(path, "rb") as stream:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))
    return max(lines - 1, 0)


def parse_shard(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise click.BadParameter("write it K/N, for example 0/4") from None
    if not 0 <= index < count:
        raise click.BadParameter("K must be between 0 and N-1")
    return index, count


def finish(action: str, report: ImportReport, elapsed: float, dry_run: bool, as_json: bool = False) -> None:
    cli_event(action, "dry-run" if dry_run else "some-rows-rejected" if report.rejected else "success")
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(report), "seconds": round(elapsed, 3)}))
    else:
        click.echo(f"{report.summary()} in {elapsed:,.1f} s")
    if report.rejected:
        sys.exit(EXIT_REJECTED)


def unusable_file(path: str, error: ImportFileError, as_json: bool) -> NoReturn:
    click.echo(f"{path}: {error}; nothing more was imported", err=True)
    if as_json:
        click.echo(json.dumps({"error": str(error)}))
    sys.exit(EXIT_BAD_FILE)


def default_letters_for() -> str:
    """Every letter carries its reference when claims may ask for it (``claim_step_up``)."""
    return "no-ssn" if services().programme.claim_step_up == "off" else "all"


@click.command("import-patients")
@click.argument("path", metavar="FILE.csv")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=os.cpu_count() or 1,
    show_default=True,
    help="Processes hashing in parallel.",
)
@click.option("--dry-run", is_flag=True, help="Validate every row, write nothing.")
@click.option(
    "--letters",
    "letters_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Write record_id,reference for the mail house: every letter carries its reference.",
)
@click.option(
    "--letters-for",
    type=click.Choice(["all", "no-ssn"]),
    default=None,
    help="Whose references --letters writes [default: all, unless the programme's claim_step_up is off: then "
    "only records without an SSN, who cannot verify without it].",
)
@click.option("--shard", callback=parse_shard, metavar="K/N", help="Import only this machine's share of the rows.")
@click.option(
    "--rehash", is_flag=True, help="Hash stored records again too: applies corrected names, birth dates, ZIPs or SSNs."
)
@click.option("--progress/--no-progress", default=None, help="Show progress on stderr [default: on a terminal].")
@click.option("--json", "as_json", is_flag=True, help="End with a JSON summary on stdout instead of a sentence.")
@with_appcontext
def import_patients_command(
    path: str, workers: int, dry_run: bool, letters_path: str | None, letters_for: str | None,
    shard: tuple[int, int] | None, rehash: bool, progress: bool | None, as_json: bool,
) -> None:  # fmt: skip
    """Import the breach list as keyed hashes. Exit 1 when any row was rejected, 2 when the file is unusable."""
    show = sys.stderr.isatty() if progress is None else progress
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        letters = None
        if letters_path:
            letters_file = stack.enter_context(open_private(letters_path))
            letters = csv.writer(letters_file, lineterminator="\n")
            letters.writerow(["record_id", "reference"])
        stream = stack.enter_context(open_csv(path))
        bar = stack.enter_context(contextlib.closing(Progress(show, count_rows(path) if show else None)))
        importer = PatientImporter(
            db.session, services().hasher, workers=workers, on_reject=bar.reject,
            on_progress=bar, letters=letters, all_letters=(letters_for or default_letters_for()) == "all",
            shard=shard, dry_run=dry_run, rehash=rehash,
        )  # fmt: skip
        try:
            report = importer.run(read_csv(stream, PATIENT_COLUMNS))
        except ImportFileError as error:
            bar.close()
            unusable_file(path, error, as_json)
    finish("import-patients", report, time.monotonic() - started, dry_run, as_json)


@click.command("import-codes")
@click.argument("path", metavar="FILE.csv")
@click.option("--dry-run", is_flag=True, help="Validate every row, write nothing.")
@with_appcontext
def import_codes_command(path: str, dry_run: bool) -> None:
    """Add activation codes to the pool (encrypted). Exit 1 when any row was rejected."""
    started = time.monotonic()
    with open_csv(path) as stream:
        try:
            report = import_codes(
                db.session, services().cipher, read_csv(stream, CODE_COLUMNS, CODE_OPTIONAL_COLUMNS),
                on_reject=report_rejection, dry_run=dry_run,
            )  # fmt: skip
        except ImportFileError as error:
            click.echo(f"{path}: {error}; nothing more was imported", err=True)
            sys.exit(EXIT_BAD_FILE)
    status = pool_status(db.session)
    click.echo(f"pool: {status.total:,} codes, {status.claimed:,} claimed, {status.available:,} available")
    finish("import-codes", report, time.monotonic() - started, dry_run)


def rotate_code_key(session: Session, batch_size: int = RESEAL_BATCH) -> tuple[int, int]:
    """Re-seal everything still under an older code-key version: the codes, then the staff TOTP
    secrets. Returns how many of each; a rerun after a crash finishes the job."""
    codes = reseal_codes(session, services().cipher, batch_size)
    return codes, reseal_totp_secrets(session, services().totp, batch_size)


@click.command("rotate-code-key")
@with_appcontext
def rotate_code_key_command() -> None:
    """Re-encrypt the code pool and the staff TOTP secrets under PORTAL_CODE_KEY (old values opened
    with PORTAL_CODE_KEY_PREVIOUS, which may be removed once this has run to the end)."""
    try:
        codes, totp_secrets = rotate_code_key(db.session)
    except KeyVersionMissing as missing:
        # The old key was removed before the rotation finished: what is done so far is kept.
        raise click.ClickException(
            f"some values are still sealed under code-key version {missing.version}, which is not configured:"
            f" set that key again as PORTAL_CODE_KEY_PREVIOUS and run rotate-code-key again"
        ) from None
    cli_event("rotate-code-key", "success")
    click.echo(
        f"{codes:,} codes and {totp_secrets:,} staff TOTP secrets re-encrypted"
        f" under key version {services().cipher.keyring.current_version}"
    )


# --- Running the programme -----------------------------------------------------------------------


@click.command("stats")
@click.option("--days", type=click.IntRange(1, 366), default=14, show_default=True, help="Days to show, up to today.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables.")
@with_appcontext
def stats_command(days: int, as_json: bool) -> None:
    """Verifications, claims and the pool, per day (UTC): the dashboard's figures in the terminal."""
    summary = stats.summarise(db.session, datetime.now(UTC).date(), days)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
        return
    columns = (
        "verified", "failed", "throttled", "exposures_viewed", "claimed", "pool_empty", "misuse_reported", "reissued",
    )  # fmt: skip
    click.echo("day        " + " ".join(f"{name.replace('_', ' '):>16}" for name in columns))
    for day in summary.days:
        click.echo(f"{day.start:%Y-%m-%d} " + " ".join(f"{getattr(day, name):>16,}" for name in columns))
    surfaces = ", ".join(f"{surface} {count:,}" for surface, count in summary.claims_by_surface.items())
    click.echo(f"claims by surface: {surfaces}")
    pool = summary.pool
    run_out = pool.run_out.isoformat() if pool.run_out else "not at the current rate (no claims this week)"
    click.echo(f"pool: {pool.available:,} codes left, {pool.claimed:,} claimed, {pool.claims_per_day:,} a day")
    click.echo(f"pool runs out: {run_out}")
    for alert in summary.alerts:
        click.echo(f"alert: {alert.hour:%Y-%m-%d %H:00} {alert.kind} on {alert.channel} ({alert.count})")


def parse_day(_ctx: click.Context, _param: click.Parameter, value: str) -> date:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("write it YYYY-MM-DD") from None
    if day > datetime.now(UTC).date():
        raise click.BadParameter("must not be after today: a purge never reaches into what is still live")
    return day


@click.command("purge")
@click.option("--before", required=True, callback=parse_day, metavar="YYYY-MM-DD", help="The cut-off date (UTC).")
@click.option("--dry-run", is_flag=True, help="Say what would be destroyed; change nothing.")
@click.option("--programme-end", is_flag=True, help="Also destroy every record, code and rate-limit counter.")
@click.option("--yes", is_flag=True, help="Do not ask before destroying the records at programme end.")
@click.option("--json", "as_json", is_flag=True, help="A JSON report on stdout.")
@with_appcontext
def purge_command(before: date, dry_run: bool, programme_end: bool, yes: bool, as_json: bool) -> None:
    """Destroy expired verifications (and at programme end the records and codes); keep the hourly
    counts and the audit trail for PORTAL_AUDIT_RETENTION_DAYS. Every purge is recorded as an event."""
    if programme_end and not dry_run and not yes:
        click.confirm("Destroy every patient record, code and verification for good?", abort=True)
    report = retention.purge(
        db.session, limit_store(), before=before, dry_run=dry_run,
        programme_end=programme_end, retention_days=current_app.config["AUDIT_RETENTION_DAYS"],
    )  # fmt: skip
    outcome = "dry-run" if dry_run else "programme-end" if programme_end else "expired"
    cli_event("purge", outcome)
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    verb = "would be destroyed" if dry_run else "destroyed"
    click.echo(f"purge before {before.isoformat()}{' (dry run)' if dry_run else ''}:")
    for name in ("verifications", "letter_records", "activation_codes", "patients", "hash_schemes", "hourly_counts"):
        click.echo(f"  {name.replace('_', ' ')}: {getattr(report, name):,} {verb}")
    click.echo(f"  audit rows past their retention period: {report.audit_rows_past_retention:,} (kept)")
    limits = "cleared" if report.rate_limit_state_cleared else "expires by itself, cleared at programme end"
    click.echo(f"  rate-limit state: {limits}")


# --- Audit trail and staff ----------------------------------------------------------------------


def cli_event(action: str, outcome: str) -> None:
    record(Event(action, outcome, "cli"))


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit trail."""


class HeadParam(click.ParamType):
    """``[LANE/]POSITION:MAC``, as the log's ``audit_head`` and ``/metrics`` publish a lane's head."""

    name = "[LANE/]POSITION:MAC"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Head:
        if isinstance(value, Head):
            return value
        try:
            return Head.parse(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


@audit_group.command("verify")
@click.option(
    "--expect-head",
    "expected",
    type=HeadParam(),
    multiple=True,
    help="A head published earlier (a log line's audit_head, or /metrics): that row must still be there,"
    " unchanged. Repeat for several lanes.",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    help="A file of heads kept away from the database: checked like --expect-head, then replaced by the"
    " current heads when the trail holds (created by the first run).",
)
@with_appcontext
def audit_verify(expected: tuple[Head, ...], checkpoint: str | None) -> None:
    """Check every link of every lane and that published heads are still there; exit 1 naming the first break."""
    kept = read_checkpoint(checkpoint) if checkpoint else []
    try:
        with db.engine.connect() as connection:
            verdict = services().audit.verify(connection, [*expected, *kept])
    except SQLAlchemyError as error:  # a dropped table or column is tampering too: one line, no traceback
        detail = str(getattr(error, "orig", None) or "").strip().splitlines()[:1]
        click.echo(f"audit trail BROKEN: it cannot be read ({error.__class__.__name__}: {''.join(detail)[:160]})")
        sys.exit(1)
    broken = verdict.broken
    if broken is not None:
        where = f"row {broken.lane}/{broken.position}"
        click.echo(f"audit trail BROKEN at {where}: {broken.reason} ({verdict.rows:,} rows before it hold)")
        sys.exit(1)
    click.echo(f"audit trail intact: {verdict.rows:,} rows; heads {' '.join(map(str, verdict.heads))}")
    if checkpoint:
        write_checkpoint(checkpoint, verdict.heads)
    if expected or kept:
        click.echo(f"anchored: {len(expected) + len(kept)} published heads still there")
    else:
        click.echo(
            "not anchored: rows deleted from a lane's end with its head rewound would not show;"
            " pass --expect-head or --checkpoint (docs/deploy.md, step 10)"
        )


def read_checkpoint(path: str) -> list[Head]:
    """The heads a checkpoint file holds (none before its first run): one per line, # for comments."""
    try:
        with open(path, encoding="utf-8") as stream:
            lines = [line.strip() for line in stream if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        click.echo(f"checkpoint {path}: none yet, written after this run")
        return []
    except (OSError, UnicodeDecodeError) as error:
        raise click.ClickException(f"checkpoint {path} cannot be read ({error.__class__.__name__})") from None
    try:
        return [Head.parse(line) for line in lines]
    except ValueError as error:
        raise click.ClickException(f"checkpoint {path}: {error}") from None


def write_checkpoint(path: str, heads: Sequence[Head]) -> None:
    """Replace the file in one step: a crash leaves the old checkpoint or the new one, never half."""
    with open_private(f"{path}.new") as out:
        out.write(f"# portal audit verify, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: lane/position:MAC\n")
        out.writelines(f"{head}\n" for head in heads)
    os.replace(f"{path}.new", path)
    click.echo(f"checkpoint {path}: {len(heads)} heads written")


@click.group("letters")
def letters_group() -> None:
    """Replacement letters for people with no SSN on file."""


def write_rows(out: IO[str], rows: Iterable[Sequence[object]], delimiter: str = ",") -> int:
    """CSV (or tab-separated) rows of spreadsheet-safe cells, quoted where a cell holds the delimiter,
    a quote or a line break; how many rows were written."""
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    count = 0
    for row in rows:
        # A partner's name, a product or a record id came from someone else's file.
        writer.writerow([spreadsheet_safe(str(cell)) for cell in row])
        count += 1
    return count


def write_private_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    """Write a header and ``rows`` to a 0600 file (``open_private``); how many rows were written."""
    with open_private(path) as out:
        write_rows(out, [header])
        return write_rows(out, rows)


@letters_group.command("reissue")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), required=True)
@with_appcontext
def letters_reissue(out_path: str) -> None:
    """Write record_id,reference of every record whose letter agents asked to replace (each once)."""
    rows = export_requested(db.session, LetterVault(services().hasher))
    count = write_private_csv(out_path, ["record_id", "reference"], rows)
    cli_event("letters-reissue", f"exported:{count}")
    click.echo(f"{count:,} replacement letters written to {out_path}")


@click.group("codes")
def codes_group() -> None:
    """The activation-code pool, for the provider."""


@codes_group.command("revoked")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First day (UTC) to include.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), required=True)
@with_appcontext
def codes_revoked(since: datetime, out_path: str) -> None:
    """Write the codes revoked since a day (someone else used them), for the provider to refuse.

    The file holds the codes in clear, so it is created 0600 like every file that unlocks something.
    """
    revoked = revoked_since(db.session, services().cipher, since.replace(tzinfo=UTC))
    rows = (
        (r.code, r.product, r.enroll_by.isoformat(), r.claimed_at.isoformat(), r.revoked_at.isoformat())
        for r in revoked
    )
    count = write_private_csv(out_path, ["code", "product", "enroll_by", "claimed_at", "revoked_at"], rows)
    cli_event("codes-export", f"exported:{count}")
    click.echo(f"{count:,} revoked codes written to {out_path}")


def print_enrolment(username: str, password: str, uri: str) -> None:
    """The one time the initial password and the TOTP secret are shown: hand them over in person."""
    click.echo(f"username: {username}")
    click.echo(f"password: {password}")
    click.echo(f"otpauth URI: {uri}")
    segno.make(uri, error="m").terminal(compact=True)


def staff_command(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """A command acting on one existing staff member given as USERNAME."""

    def decorator(action: Callable[[Staff], None]) -> click.Command:
        @click.command(name, help=action.__doc__)
        @click.argument("username")
        @with_appcontext
        def command(username: str) -> None:
            try:
                staff = find_staff(db.session, username)
            except StaffError as error:
                raise click.UsageError(str(error)) from None
            action(staff)
            cli_event(name, f"staff:{staff.id}")

        return command

    return decorator


@click.command("create-staff")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), required=True)
@with_appcontext
def create_staff_command(username: str, role: str) -> None:
    """Create a console account; prints its initial password and TOTP enrolment."""
    try:
        enrolment = create_staff(db.session, services().totp, username, role)
    except StaffError as error:
        raise click.UsageError(str(error)) from None
    cli_event("create-staff", f"staff:{enrolment.staff.id}")
    print_enrolment(enrolment.staff.username, enrolment.password, enrolment.otpauth_uri)


@staff_command("disable-staff")
def disable_staff_command(staff: Staff) -> None:
    """Disable an account and end its sessions at once."""
    disable_staff(db.session, staff)
    click.echo(f"{staff.username} disabled")


@staff_command("enable-staff")
def enable_staff_command(staff: Staff) -> None:
    """Let a disabled account sign in again, with its password and authenticator as they were."""
    enable_staff(db.session, staff)
    click.echo(f"{staff.username} enabled")


@staff_command("reset-staff-mfa")
def reset_staff_mfa_command(staff: Staff) -> None:
    """New TOTP secret and new initial password; ends the account's sessions."""
    password, uri = reset_mfa(db.session, services().totp, staff)
    print_enrolment(staff.username, password, uri)


@click.command("list-staff")
@with_appcontext
def list_staff_command() -> None:
    """Every console account, its role and state."""
    for staff in list_staff(db.session):
        state = "disabled" if staff.disabled else "active"
        click.echo(f"{staff.username:<24} {staff.role:<11} {state}")


# --- Partner API keys ----------------------------------------------------------------------------


@click.command("create-api-key")
@click.option("--partner", required=True, help="Who the key is for (shown in listings).")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(partner_keys.SCOPES))
@click.option("--rate", default=None, help='Requests allowed, e.g. "120/minute" (default: PORTAL_API_KEY_RATE).')
@click.option("--expires", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Last day the key works (UTC).")
@with_appcontext
def create_api_key_command(partner: str, scopes: tuple[str, ...], rate: str | None, expires: datetime | None) -> None:
    """Create a partner key and print it once: only its digest is kept."""
    try:
        new = partner_keys.create_key(
            db.session, partner, list(scopes), rate or current_app.config["API_KEY_RATE"],
            expires.date() if expires else None,
        )  # fmt: skip
    except partner_keys.InvalidKeySetting as error:
        raise click.BadParameter(str(error)) from None
    click.echo(f"key {new.row.id} for {new.row.partner} ({new.row.scopes}, {new.row.rate}):")
    click.echo(new.secret)
    click.echo("Give it to the partner now: it cannot be shown again.", err=True)


@click.command("list-api-keys")
@with_appcontext
def list_api_keys_command() -> None:
    """One line per key, tab-separated: id, prefix, partner, scopes, rate, expiry, state, last used."""
    rows = (
        (
            key.id, key.prefix, key.partner, key.scopes.replace(" ", ","), key.rate,
            _day(key.expires_at - timedelta(days=1)) if key.expires_at else "never",
            partner_keys.key_state(key),
            key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never",
        )
        for key in partner_keys.all_keys(db.session)
    )  # fmt: skip
    write_rows(click.get_text_stream("stdout"), rows, delimiter="\t")


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


@click.command("revoke-api-key")
@click.argument("key_id", type=int)
@with_appcontext
def revoke_api_key_command(key_id: int) -> None:
    """Revoke a key: refused from its next request on, on every server."""
    key = partner_keys.revoke_key(db.session, key_id)
    if key is None:
        click.echo(f"no key {key_id}", err=True)
        sys.exit(1)
    click.echo(f"key {key.id} ({key.prefix}, {key.partner}) revoked")


# --- Synthetic data and the demo -----------------------------------------------------------------


def generator_command(name: str, header: tuple[str, ...], rows: Callable[..., Iterator[dict[str, str]]], help: str):  # type: ignore[no-untyped-def]
    """A command writing COUNT synthetic rows of one kind as an import CSV (for rehearsals and benchmarks)."""

    @click.command(name, help=help)
    @click.argument("count", type=click.IntRange(1))
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--out", type=click.Path(dir_okay=False, writable=True), default="-", show_default=True)
    def command(count: int, seed: int, out: str) -> None:
        synthetic.write_csv(sys.stdout if out == "-" else out, header, rows(count, seed))

    return command


generate_patients_command = generator_command(
    "generate-patients",
    synthetic.PATIENT_HEADER,
    synthetic.synthetic_patients,
    "Write COUNT synthetic (made-up) patients as an import CSV: for rehearsals and benchmarks.",
)
generate_codes_command = generator_command(
    "generate-codes",
    synthetic.CODE_HEADER,
    synthetic.synthetic_codes,
    "Write COUNT synthetic activation codes as an import CSV.",
)


DEMO_SEED = 2026
DEMO_CHILDREN = 0.15  # the share of children among the demo's people: a list of patients holds minors
DEMO_HOST = "127.0.0.1"
DEMO_STAFF = (("demo-agent", "agent"), ("demo-supervisor", "supervisor"))
DEMO_PARTNER = "Demo sandbox"
SLOW_RATE = "5/minute"  # the sandbox's second key: its rate is quick to reach


def enumerate_rows(rows: Iterable[dict[str, str]]) -> Iterator[tuple[int, dict[str, str]]]:
    """Number generated rows as a CSV file would (the header is line 1)."""
    return enumerate(rows, start=2)


def load_demo_data(app: Flask, patients: int) -> None:
    """Migrate, then import the synthetic patients, the API's sandbox people and a code for each
    straight from memory (no CSV on disk), showing the hashing's progress."""
    with app.app_context():
        schema.upgrade(db.engine)
        people = patients + len(SANDBOX_PEOPLE)
        click.echo(f"Hashing {people:,} synthetic people with Argon2id, one hash each (a second run skips them):")
        bar = Progress(True, people)
        rows = itertools.chain(demo_people(patients), SANDBOX_PEOPLE)
        with contextlib.closing(bar):
            PatientImporter(
                db.session, services().hasher, workers=os.cpu_count() or 1, on_reject=bar.reject, on_progress=bar,
            ).run(enumerate_rows(rows))  # fmt: skip
        import_codes(
            db.session, services().cipher, enumerate_rows(synthetic.synthetic_codes(people, DEMO_SEED)),
            on_reject=report_rejection,
        )  # fmt: skip


def demo_people(count: int) -> Iterator[dict[str, str]]:
    """The demo's synthetic people: what each had exposed is drawn from the programme's list."""
    in_copy = services().programme.exposed_fields or None
    return synthetic.synthetic_patients(count, DEMO_SEED, in_copy=in_copy, children=DEMO_CHILDREN)


def sample_people(patients: int) -> list[tuple[dict[str, str], str]]:
    """Up to three people of the demo's list to try, each with a note: the common cases of a breach
    list (a small list may lack one of them)."""
    rows = list(demo_people(min(patients, 500)))
    notice_date = services().programme.notice_date

    def minor(row: dict[str, str]) -> bool:
        return exposure.is_minor(date.fromisoformat(row["date_of_birth"]), notice_date)

    kinds: list[tuple[str, Callable[[dict[str, str]], bool]]] = [
        ("SSN exposed", lambda r: "ssn" in r["exposed_fields"].split(";") and not minor(r)),
        ("no SSN on file", lambda r: not r["ssn"] and not minor(r)),
        ("under 18: a child's plan", minor),
    ]
    found = ((next(filter(kind, rows), None), note) for note, kind in kinds)
    return [(row, note) for row, note in found if row is not None]


def person_line(row: dict[str, str], note: str = "") -> str:
    """One person to try, as they would type themselves in."""
    factor = (
        f"SSN last 4 {row['ssn'][-4:]}" if row["ssn"]
        else f"reference {format_reference(services().hasher.letter_reference(row['record_id']))}"
    )  # fmt: skip
    line = f"    {row['last_name']:<14} born {row['date_of_birth']}  ZIP {row['zip'][:5]}  {factor}"
    return f"{line:<78} {note}".rstrip()


def demo_enrolment(username: str, role: str) -> tuple[str, str]:
    """(password, otpauth URI) of a console account: new, or given new credentials when a previous
    run of the demo made it (they were shown once, then)."""
    try:
        staff = find_staff(db.session, username)
    except StaffError:
        enrolment = create_staff(db.session, services().totp, username, role)
        cli_event("create-staff", f"staff:{enrolment.staff.id}")
        return enrolment.password, enrolment.otpauth_uri
    cli_event("reset-staff-mfa", f"staff:{staff.id}")
    return reset_mfa(db.session, services().totp, staff)


def demo_keys() -> tuple[str, str]:
    """The sandbox's two partner keys, made anew (a key is shown once): one with both scopes at the
    usual rate, one that may only verify, at a rate quick to reach. A previous run's keys are revoked."""
    for key in partner_keys.all_keys(db.session):
        if key.partner.startswith(DEMO_PARTNER):
            partner_keys.revoke_key(db.session, key.id)
    rate = current_app.config["API_KEY_RATE"]
    full = partner_keys.create_key(db.session, DEMO_PARTNER, list(partner_keys.SCOPES), rate)
    slow = partner_keys.create_key(db.session, f"{DEMO_PARTNER}, verify only", ["verify"], SLOW_RATE)
    return full.secret, slow.secret


def check_port(port: int) -> None:
    """Refuse at once when something already listens on the port (another demo), before any work."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((DEMO_HOST, port))
        except OSError:
            raise port_taken(port) from None


def port_taken(port: int) -> click.ClickException:
    return click.ClickException(f"port {port} on {DEMO_HOST} is taken (another demo?): stop it, or use --port N")


def print_demo(site: str, patients: int, staff: list[tuple[str, str, str, str]], keys: tuple[str, str]) -> None:
    """The three audiences' ways in: the site's people, the console's accounts, the API's sandbox."""
    click.echo(f"\nTHE WEBSITE, for patients: {site}")
    click.echo(f"  Try these synthetic people at {site}lookup")
    for row, note in sample_people(patients):
        click.echo(person_line(row, note))
    click.echo(f"\nTHE CONSOLE, for the call center: {site}agent/  (supervisors' dashboard: {site}agent/dashboard)")
    click.echo("  On for this demo only: a server serves it only when PORTAL_AGENT_VIEW=true.")
    click.echo("  Sign in with the username, the password and the 6-digit code of an authenticator app that read")
    click.echo("  the QR code (or the otpauth URI); the first sign-in asks for a new password.")
    for username, role, password, uri in staff:
        click.echo(f"\n  {role}")
        print_enrolment(username, password, uri)
    click.echo(f"\nTHE PARTNER API: reference {site}api/v1/docs, contract {site}api/v1/openapi.json")
    click.echo(f"  export API={site}api/v1")
    click.echo(f"  export KEY={keys[0]}   # verify and claim, {current_app.config['API_KEY_RATE']}")
    click.echo(f"  export SLOW_KEY={keys[1]}   # verify only, {SLOW_RATE}")
    reference = format_reference(services().hasher.letter_reference(NO_SSN_PERSON))
    click.echo(f"  export REFERENCE={reference}   # O'Brien's letter")
    click.echo("  People reserved for practising the API (not shown to the website's visitors):")
    for row in SANDBOX_PEOPLE:
        click.echo(person_line(row, PRACTICE[row["record_id"]]))
    click.echo('  A verification, a claim and each answer (README.md, "Try it", says more):')
    for practice in PRACTICES:
        click.echo(f"\n  # {practice.title}\n  {practice.command}\n  # → {practice.answer}")
    click.echo("")


@click.command("demo")
@click.option("--patients", type=click.IntRange(10, 1_000_000), default=2000, show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--serve/--no-serve", default=True, help="Start the site after loading the data.")
def demo_command(patients: int, port: int, serve: bool) -> None:
    """Create instance/ with fresh secrets and synthetic data, a console account of each role and
    partner keys, then serve the site, the console and the API on 127.0.0.1."""
    if serve:
        check_port(port)
    secrets_file = write_development_secrets(Flask("portal").instance_path)
    # The console is off unless a server turns it on: this one does, for the demo only.
    os.environ["PORTAL_AGENT_VIEW"] = "true"
    # The ``portal`` command's own factory (portal/app.py), called only now that the secrets exist.
    app = click.get_current_context().ensure_object(ScriptInfo).load_app()
    load_demo_data(app, patients)
    site = f"http://{DEMO_HOST}:{port}/"
    with app.app_context():
        staff = [(name, role, *demo_enrolment(name, role)) for name, role in DEMO_STAFF]
        keys = demo_keys()
        click.echo(f"Secrets: {secrets_file} (development only). Each run prints new staff credentials and keys.")
        print_demo(site, patients, staff, keys)
    if serve:
        try:
            server = make_server(DEMO_HOST, port, app, threaded=True)  # listens from here on
        except OSError:
            raise port_taken(port) from None
        click.echo(f"Serving {site}  (Ctrl+C stops)")
        server.serve_forever()
