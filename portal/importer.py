"""Streaming, resumable imports of the breach list and of the code pool.

Plaintext identifiers live only in this process's memory, one batch at a time. Worker processes
receive HMAC outputs (already keyed) and return Argon2id digests: they never see an identifier
or a key. Each batch is one transaction, so a crash loses at most the batch in flight, and a
re-run skips what is already there (found by the keyed hash of ``record_id``).
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import re
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import IO, Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal import exposure
from portal.claims import PRODUCT_MAX, CodeCipher, normalise_code
from portal.identity import (
    Argon2Params,
    IdentifierHasher,
    IdentityClaim,
    InvalidIdentifier,
    current_scheme,
    format_reference,
    normalise_last_name,
    normalise_ssn,
    normalise_zip,
    parse_birth_date,
    retire_unused_schemes,
    scheme_params,
    stretch,
)
from portal.letters import LetterVault
from portal.models import ActivationCode, LetterRecord, Patient

PATIENT_COLUMNS = (
    "record_id", "first_name", "last_name", "date_of_birth", "ssn",
    "street", "city", "state", "zip", "phone", "exposed_fields",
)  # fmt: skip
CODE_COLUMNS = ("code", "enroll_by")
CODE_OPTIONAL_COLUMNS = ("product",)
DEFAULT_PRODUCT = "Identity protection, 24 months"
# Rows per hashing job and per transaction: small, so that the last jobs of a file leave no core
# idle for long (25 rows is about half a second of one core at the default Argon2 parameters).
BATCH_SIZE = 25
CODE_BATCH_SIZE = 1000  # codes need no hashing: larger transactions
MAX_FIELD_LENGTH = 200

US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
    "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY AS GU MP PR VI AA AE AP".split()
)
RECORD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/\-]{0,63}")


class ImportFileError(Exception):
    """The file as a whole cannot be read (header, encoding); nothing was imported."""


class RowError(ValueError):
    """One row is invalid; the message names the column and the reason, never the value."""


@dataclass
class ImportReport:
    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    valid: int = 0  # dry run: rows that passed validation
    rejected: int = 0
    skipped_other_shard: int = 0
    letters: int = 0

    def summary(self) -> str:
        if self.valid:
            return (
                f"{self.read:,} rows read, {self.valid:,} valid, {self.rejected:,} rejected (dry run: nothing written)"
            )
        parts = [f"{self.read:,} rows read", f"{self.added:,} added", f"{self.updated:,} updated"]
        parts += [f"{self.unchanged:,} already up to date", f"{self.rejected:,} rejected"]
        if self.skipped_other_shard:
            parts.append(f"{self.skipped_other_shard:,} left to other shards")
        if self.letters:
            parts.append(f"{self.letters:,} letter references written")
        return ", ".join(parts)


RejectFn = Callable[[int, str], None]
ProgressFn = Callable[[ImportReport], None]


def read_csv(
    stream: IO[str], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) lazily; a malformed header stops the import before any row."""
    reader = csv.DictReader(stream)
    try:
        header = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as error:
        raise ImportFileError(f"cannot read the header: {error.__class__.__name__}") from error
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    # Unknown header cells are named by position, not quoted: in a file that lacks its header line
    # "the header" is the first person's record.
    unknown = [str(position) for position, name in enumerate(header, start=1) if name not in required + optional]
    if missing or unknown:
        raise ImportFileError(
            f"header must be {','.join(required)}"
            + (f" (optional: {','.join(optional)})" if optional else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unexpected column(s) at position {', '.join(unknown)}" if unknown else "")
        )
    reader.fieldnames = header
    try:
        for row in reader:
            yield reader.line_num, row
    except (UnicodeDecodeError, csv.Error) as error:
        raise ImportFileError(f"line {reader.line_num + 1}: unreadable ({error.__class__.__name__})") from error


def _cell(row: dict[str, Any], column: str, required: bool = True) -> str:
    value = row.get(column)
    if not isinstance(value, str) or None in row:
        raise RowError("wrong number of columns")
    value = value.strip()
    if required and not value:
        raise RowError(f"{column} is empty")
    if len(value) > MAX_FIELD_LENGTH:
        raise RowError(f"{column} is longer than {MAX_FIELD_LENGTH} characters")
    return value


@dataclass(frozen=True)
class PatientRow:
    """A validated row: only what the portal keeps, plus the claim to hash (in memory only)."""

    line: int
    record_id: str
    record_keys: list[bytes]  # under every held key version, current first (finds rows during a rotation)
    claim: IdentityClaim
    exposed: int
    reference: str  # printed on this person's letter (normalised), whether or not they have an SSN
    reference_digest: bytes  # what the database keeps of it

    @property
    def record_key(self) -> bytes:
        return self.record_keys[0]


def parse_patient_row(line: int, row: dict[str, Any], hasher: IdentifierHasher) -> PatientRow:
    """Validate every column (even those not kept) so the vendor learns of bad data now."""
    try:
        record_id = _cell(row, "record_id")
        if not RECORD_ID.fullmatch(record_id):
            raise RowError("record_id must be 1-64 letters, digits or . _ : / -")
        _cell(row, "first_name")
        last_name = normalise_last_name(_cell(row, "last_name"))
        born = parse_birth_date(_cell(row, "date_of_birth"))
        ssn = normalise_ssn(_cell(row, "ssn", required=False))
        _cell(row, "street", required=False)
        _cell(row, "city", required=False)
        state = _cell(row, "state", required=False).upper()
        if state and state not in US_STATES:
            raise RowError("state is not a two-letter US state or territory code")
        zip_code = normalise_zip(_cell(row, "zip"))
        phone = re.sub(r"[\s().\-]", "", _cell(row, "phone", required=False)).removeprefix("+1")
        if phone and not re.fullmatch(r"[2-9][0-9]{9}", phone):
            raise RowError("phone is not a 10-digit US number")
        exposed = exposure.parse_exposed_fields(_cell(row, "exposed_fields"))
    except (InvalidIdentifier, RowError) as error:
        raise RowError(str(error)) from error
    except ValueError as error:  # exposure.parse_exposed_fields names the unknown token
        raise RowError(str(error)) from error
    reference = hasher.letter_reference(record_id)
    if ssn:
        claim = IdentityClaim(last_name, born, zip_code, ssn_last4=ssn[-4:])
    else:
        claim = IdentityClaim(last_name, born, zip_code, reference=reference)
    keys = hasher.record_keys(record_id)
    return PatientRow(line, record_id, keys, claim, exposed, reference, hasher.reference_digest(reference))


def in_shard(record_id: str, shard: tuple[int, int] | None) -> bool:
    """``--shard K/N``: a stable split of the rows across N importing machines.

    Decided on the raw ``record_id`` cell before the row is parsed, so that each shard validates
    (and reports) its own rows only: every shard still reads the whole file, but parsing a row
    costs about 35 times what this hash does, and N shards now parse it once between them."""
    if shard is None:
        return True
    index, count = shard
    return int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big") % count == index


def stretch_all(messages: list[bytes], salt: bytes, params: Argon2Params) -> list[bytes]:
    """A worker's job: Argon2id over keyed messages. It never sees an identifier or a key."""
    return [stretch(message, salt, params) for message in messages]


@dataclass
class _Batch:
    rows: list[PatientRow]
    rehash: dict[int, int]  # index in rows -> id of the record it re-hashes
    pending: Future[list[bytes]] | list[bytes] = field(default_factory=list)


class SeenKeys:
    """The 64-bit record-key prefixes met in one run, at about 8 bytes each (a set of ints costs
    about 70): a sorted array, and a set of recent ones merged into it once that holds a sixteenth
    as many (at least MERGE_AT).

    Merging only every 65,536 rows rewrote the whole array that often: quadratic, 13 minutes of
    merging at ten million rows and days at 190 million. Merging at a fixed fraction copies each
    key about 17 times in all, for 4 more bytes a key in the set. Ten million keys: 80 MB, 160 MB
    during a merge.
    """

    MERGE_AT = 65_536
    GROWTH = 16  # the array is merged with the set once the set holds 1/GROWTH of its size

    def __init__(self) -> None:
        self._sorted = array("Q")
        self._recent: set[int] = set()

    def add(self, key: int) -> bool:
        """Remember ``key``; False when it was met before."""
        if key in self._recent:
            return False
        at = bisect_left(self._sorted, key)
        if at < len(self._sorted) and self._sorted[at] == key:
            return False
        self._recent.add(key)
        if len(self._recent) >= max(self.MERGE_AT, len(self._sorted) // self.GROWTH):
            self._sorted = array("Q", heapq.merge(self._sorted, sorted(self._recent)))
            self._recent.clear()
        return True


class PatientImporter:
    """Streams validated rows through parallel hashing into batched, idempotent writes."""

    def __init__(
        self,
        session: Session,
        hasher: IdentifierHasher,
        *,
        workers: int = 1,
        on_reject: RejectFn,
        on_progress: ProgressFn | None = None,
        letters: csv.writer | None = None,  # type: ignore[valid-type]
        all_letters: bool = False,
        shard: tuple[int, int] | None = None,
        dry_run: bool = False,
        rehash: bool = False,
    ) -> None:
        self.session = session
        self.hasher = hasher
        self.workers = max(1, workers)
        self.on_reject = on_reject
        self.on_progress = on_progress
        self.letters = letters
        # References for every letter (the claim step-up), not only those of people without an SSN.
        self.all_letters = all_letters
        self.shard = shard
        self.dry_run = dry_run
        self.rehash = rehash  # hash stored records again: applies corrected identifiers
        self.report = ImportReport()
        self._seen = SeenKeys()
        self._vault = LetterVault(hasher)

    def run(self, rows: Iterable[tuple[int, dict[str, str]]]) -> ImportReport:
        scheme = current_scheme(self.session, self.hasher)
        self._scheme_id, self._salt, self._params = scheme.id, scheme.salt, scheme_params(scheme)
        if self.dry_run:
            # Write nothing, not even a new scheme: every lookup would try it from then on.
            self.session.rollback()
        else:
            self.session.commit()
        in_flight: deque[_Batch] = deque()
        executor = ProcessPoolExecutor(self.workers) if self.workers > 1 else None
        try:
            for batch in self._batches(rows):
                if executor is None:
                    batch.pending = self._stretch(batch)
                else:
                    batch.pending = executor.submit(stretch_all, self._messages(batch), self._salt, self._params)
                in_flight.append(batch)
                if len(in_flight) > 2 * self.workers:
                    self._write(in_flight.popleft())
            while in_flight:
                self._write(in_flight.popleft())
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
        if not self.dry_run:
            retire_unused_schemes(self.session, self._scheme_id)
            self.session.commit()
        return self.report

    def _reject(self, line: int, reason: str) -> None:
        self.report.rejected += 1
        self.on_reject(line, reason)

    def _batches(self, rows: Iterable[tuple[int, dict[str, str]]]) -> Iterator[_Batch]:
        parsed: list[PatientRow] = []
        for line, raw in rows:
            self.report.read += 1
            record_id = raw.get("record_id")
            if not in_shard(record_id.strip() if isinstance(record_id, str) else "", self.shard):
                self.report.skipped_other_shard += 1
                continue
            try:
                row = parse_patient_row(line, raw, self.hasher)
            except RowError as error:
                self._reject(line, str(error))
                continue
            if not self._seen.add(int.from_bytes(row.record_key[:8], "big")):
                self._reject(line, "record_id repeats an earlier row of this file")
                continue
            if self.letters is not None and (self.all_letters or row.claim.reference):
                self.letters.writerow([row.record_id, format_reference(row.reference)])
                self.report.letters += 1
            parsed.append(row)
            if len(parsed) >= BATCH_SIZE:
                yield from self._prepare(parsed)
                parsed = []
        if parsed:
            yield from self._prepare(parsed)

    def _prepare(self, rows: list[PatientRow]) -> Iterator[_Batch]:
        """Sort a batch into unchanged, flag updates, and rows that need (re-)hashing."""
        if self.dry_run:
            self.report.valid += len(rows)
            self._progress()
            return
        keys = {key: i for i, row in enumerate(rows) for key in row.record_keys}
        found = self.session.scalars(select(Patient).where(Patient.record_key.in_(keys)))
        existing = {keys[patient.record_key]: patient for patient in found}
        to_hash: list[PatientRow] = []
        rehash: dict[int, int] = {}
        for i, row in enumerate(rows):
            patient = existing.get(i)
            current = (
                patient is not None and patient.scheme_id == self._scheme_id and patient.record_key == row.record_key
            )
            if patient is not None and current and not self.rehash:
                if (patient.exposed_fields, patient.reference_digest) != (row.exposed, row.reference_digest):
                    patient.exposed_fields = row.exposed
                    patient.reference_digest = row.reference_digest  # records imported before every letter had one
                    self.report.updated += 1
                else:
                    self.report.unchanged += 1
                continue
            if patient is not None:
                rehash[len(to_hash)] = patient.id
            to_hash.append(row)
        self.session.commit()
        self.session.expunge_all()
        if to_hash:
            yield _Batch(to_hash, rehash)
        else:
            self._progress()

    def _messages(self, batch: _Batch) -> list[bytes]:
        version = self.hasher.keyring.current_version
        return [self.hasher.lookup_message(row.claim, version) for row in batch.rows]

    def _stretch(self, batch: _Batch) -> list[bytes]:
        return stretch_all(self._messages(batch), self._salt, self._params)

    def _write(self, batch: _Batch) -> None:
        digests = batch.pending.result() if isinstance(batch.pending, Future) else batch.pending
        entries = list(zip(batch.rows, digests, strict=True))
        try:
            outcomes = self._store(entries, batch.rehash)
            self.session.commit()
        except IntegrityError:
            # Another importer (another shard) stored the same identity meanwhile: go row by row.
            # Nothing of the failed attempt was counted, so no row is counted twice.
            self.session.rollback()
            outcomes = []
            for i, entry in enumerate(entries):
                try:
                    outcomes += self._store([entry], {0: batch.rehash[i]} if i in batch.rehash else {})
                    self.session.commit()
                except IntegrityError:
                    self.session.rollback()
                    outcomes.append((entry[0].line, "identity duplicates another record (imported concurrently)"))
        for line, outcome in outcomes:
            if outcome == "added":
                self.report.added += 1
            elif outcome == "updated":
                self.report.updated += 1
            else:
                self._reject(line, outcome)
        self.session.expunge_all()
        self._progress()

    def _store(self, entries: list[tuple[PatientRow, bytes]], rehash: dict[int, int]) -> list[tuple[int, str]]:
        """Insert new records, re-hash old ones; reject identities that collide with another record.

        Returns (line, "added" | "updated" | reason for rejecting), for the caller to count once committed.
        """
        outcomes: list[tuple[int, str]] = []
        digests = [digest for _, digest in entries]
        stored: dict[bytes, int] = {
            digest: patient_id
            for digest, patient_id in self.session.execute(
                select(Patient.lookup_digest, Patient.id).where(Patient.lookup_digest.in_(digests))
            )
        }
        seen: set[bytes] = set()
        without_ssn: list[tuple[PatientRow, Patient | int]] = []
        for i, (row, digest) in enumerate(entries):
            own = rehash.get(i)  # the record this row re-hashes, if any: it may keep its digest
            if digest in seen or stored.get(digest, own) != own:
                outcomes.append(
                    (row.line, "identity duplicates another record (same last name, birth date, ZIP and SSN)")
                )
                continue
            seen.add(digest)
            values = dict(
                record_key=row.record_key,
                scheme_id=self._scheme_id,
                lookup_digest=digest,
                exposed_fields=row.exposed,
                reference_digest=row.reference_digest,
            )
            if i in rehash:
                self.session.execute(update(Patient).where(Patient.id == rehash[i]).values(**values))
                outcomes.append((row.line, "updated"))
                stored_patient: Patient | int = rehash[i]
            else:
                stored_patient = Patient(**values)
                self.session.add(stored_patient)
                outcomes.append((row.line, "added"))
            if row.claim.reference is not None:
                without_ssn.append((row, stored_patient))
        self.session.flush()
        self._keep_letter_records(without_ssn)
        return outcomes

    def _keep_letter_records(self, rows: list[tuple[PatientRow, Patient | int]]) -> None:
        """What a replacement letter needs, for records without an SSN (``portal/letters.py``)."""
        for row, stored in rows:
            patient = stored if isinstance(stored, Patient) else self.session.get(Patient, stored)
            assert patient is not None
            self.session.execute(delete(LetterRecord).where(LetterRecord.patient_id == patient.id))
            claim = row.claim
            self.session.add(
                self._vault.record(patient, row.record_id, claim.last_name, claim.date_of_birth, claim.zip_code)
            )
        self.session.flush()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.report)


@dataclass(frozen=True)
class CodeRow:
    code: str
    enroll_by: date
    product: str


def parse_code_row(row: dict[str, Any], today: date) -> CodeRow:
    """Validate one pool row; the caller seals the code."""
    try:
        code = normalise_code(_cell(row, "code"))
    except ValueError as error:
        raise RowError(str(error)) from error
    try:
        enroll_by = date.fromisoformat(_cell(row, "enroll_by"))
    except ValueError as error:
        raise RowError("enroll_by must be a date written YYYY-MM-DD") from error
    if enroll_by < today:
        raise RowError("enroll_by is in the past")
    product = (row.get("product") or "").strip() or DEFAULT_PRODUCT
    if len(product) > PRODUCT_MAX:
        raise RowError(f"product is longer than {PRODUCT_MAX} characters")
    return CodeRow(code, enroll_by, product)


def import_codes(
    session: Session,
    cipher: CodeCipher,
    rows: Iterable[tuple[int, dict[str, str]]],
    *,
    on_reject: RejectFn,
    dry_run: bool = False,
    today: date | None = None,
) -> ImportReport:
    """Add codes to the pool, sealed; a code already there is left as it is, so re-runs are harmless."""
    report = ImportReport()
    seen = SeenKeys()  # 8-byte digest prefixes met in this run
    batch: list[ActivationCode] = []
    today = today or date.today()

    def flush() -> None:
        digests = [row.code_digest for row in batch]
        present = set(
            session.scalars(select(ActivationCode.code_digest).where(ActivationCode.code_digest.in_(digests)))
        )
        for row in batch:
            if row.code_digest in present:
                report.unchanged += 1
            else:
                report.added += 1
                if not dry_run:
                    session.add(row)
        session.commit()
        session.expunge_all()
        batch.clear()

    for line, raw in rows:
        report.read += 1
        try:
            parsed = parse_code_row(raw, today)
        except RowError as error:
            report.rejected += 1
            on_reject(line, str(error))
            continue
        row = cipher.seal(parsed.code)
        if not seen.add(int.from_bytes(row.code_digest[:8], "big")):
            report.rejected += 1
            on_reject(line, "code repeats an earlier row of this file")
            continue
        row.enroll_by, row.product = parsed.enroll_by, parsed.product
        batch.append(row)
        if len(batch) >= CODE_BATCH_SIZE:
            flush()
    if batch:
        flush()
    return report
