"""Who is this person? Normalisation, keyed identifier hashes and verification.

The security-critical core of the portal; it knows nothing of HTTP.

Design, in short:
* Identifiers are normalised (``normalise_*``) so that the spellings a real person types match
  the record the vendor holds.
* The normalised fields are joined into one canonical message and HMAC-ed with a subkey of
  ``PORTAL_IDENTIFIER_KEY`` (the pepper, never in the database), then stretched with Argon2id.
  The result is indexed, so a lookup is one slow hash plus one index probe whether or not the
  person exists: the same work, the same answer, no oracle.
* Without the key a dump of the database cannot test a single guess; with the key each guess
  still costs one Argon2id evaluation.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Row, Select, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.config import decode_key
from portal.hashing_slots import HashingBusy, ServerSlots, server_hashing_slots
from portal.models import HashScheme, Patient, Verification, utcnow

DIGEST_SIZE = 32
MAX_NAME_LENGTH = 100
EARLIEST_BIRTH_DATE = date(1900, 1, 1)
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CROCKFORD)
REFERENCE_LENGTH = 24  # 24 Crockford characters = 120 random-looking bits (ASVS asks >= 112)

# Letters that Unicode does not decompose into a base letter plus accent.
_LETTER_FOLDS = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"})
# Modifier letters that people read as apostrophes (the Hawaiian ʻokina, ʼ, ʹ, ...): letters to Unicode.
_MODIFIER_APOSTROPHES = frozenset(map(chr, range(0x02B9, 0x02C0)))
_REFERENCE_FOLDS = str.maketrans({"I": "1", "L": "1", "O": "0"})
_SEPARATORS = re.compile(r"[\s\-]+")


class InvalidIdentifier(ValueError):
    """An identifier that cannot belong to anyone (wrong shape); the message never repeats the value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --- Normalisation -------------------------------------------------------------------------------


def normalise_last_name(text: str) -> str:
    """Fold case, accents, spaces, apostrophes, hyphens and other punctuation away.

    "O'Brien", "o brien" and "OBRIEN" match; so do "García-López" and "garcia lopez",
    "Müller" and "Muller", "Nguyễn" and "Nguyen". Letters and digits of every script are kept.
    """
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidIdentifier("last_name", f"last name is longer than {MAX_NAME_LENGTH} characters")
    # Decompose and case-fold until neither changes anything: each can undo the other ("ǽ", "𝐀", "℡").
    folded = text
    for _ in range(4):
        folded, previous = unicodedata.normalize("NFKD", folded).casefold(), folded
        if folded == previous:
            break
    # Letters such as ø have no decomposition; folded last, so that "ǿ" (ø + accent) folds too.
    # Accents go with everything else that is not a letter or digit: NFKD split them off as
    # combining marks, and no combining mark counts as alphanumeric (tests/test_unicode.py).
    name = "".join(ch for ch in folded if ch.isalnum() and ch not in _MODIFIER_APOSTROPHES).translate(_LETTER_FOLDS)
    if not name:
        raise InvalidIdentifier("last_name", "last name has no letters")
    return name


def normalise_zip(text: str) -> str:
    """ZIP or ZIP+4, with or without the dash, to the five-digit ZIP."""
    digits = _SEPARATORS.sub("", text)
    if not re.fullmatch(r"[0-9]{5}(?:[0-9]{4})?", digits):
        raise InvalidIdentifier("zip_code", "ZIP code must be 5 digits (or ZIP+4)")
    return digits[:5]


def normalise_ssn(text: str) -> str | None:
    """A full SSN (import side): 9 digits with or without dashes or spaces; blank means none on file."""
    digits = _SEPARATORS.sub("", text)
    if not digits:
        return None
    if not re.fullmatch(r"[0-9]{9}", digits):
        raise InvalidIdentifier("ssn", "SSN must be 9 digits")
    if digits[:3] == "000" or digits[3:5] == "00" or digits[5:] == "0000":
        raise InvalidIdentifier("ssn", "SSN has an all-zero group and cannot have been issued")
    return digits


def normalise_ssn_last4(text: str) -> str:
    digits = _SEPARATORS.sub("", text)
    if not re.fullmatch(r"[0-9]{4}", digits):
        raise InvalidIdentifier("ssn_last4", "last four SSN digits must be 4 digits")
    return digits


def normalise_reference(text: str) -> str:
    """A letter reference as typed: case, spaces, dashes and look-alikes (I, L -> 1; O -> 0) forgiven."""
    code = _SEPARATORS.sub("", text).upper().translate(_REFERENCE_FOLDS)
    if len(code) != REFERENCE_LENGTH or any(ch not in CROCKFORD for ch in code):
        raise InvalidIdentifier(
            "reference", f"reference code must be {REFERENCE_LENGTH} letters and digits from your letter"
        )
    return code


def parse_birth_date(text: str, today: date | None = None) -> date:
    """YYYY-MM-DD, as an HTML date input sends it; not in the future, not before 1900."""
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text.strip()):
        raise InvalidIdentifier("date_of_birth", "date of birth must be written YYYY-MM-DD")
    try:
        born = date.fromisoformat(text.strip())
    except ValueError as error:
        raise InvalidIdentifier("date_of_birth", "date of birth is not a real date") from error
    if not EARLIEST_BIRTH_DATE <= born <= (today or date.today()):
        raise InvalidIdentifier("date_of_birth", "date of birth is out of range")
    return born


def format_reference(code: str) -> str:
    """Print a reference in groups of four so that people can read it out on the phone."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


@dataclass(frozen=True)
class IdentityClaim:
    """What a person asserts, already normalised. Exactly one of ``ssn_last4``/``reference`` is set."""

    last_name: str
    date_of_birth: date
    zip_code: str
    ssn_last4: str | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        if (self.ssn_last4 is None) == (self.reference is None):
            raise InvalidIdentifier("ssn_last4", "give either the last four SSN digits or the letter reference")

    @classmethod
    def from_input(
        cls, last_name: str, date_of_birth: str, zip_code: str, ssn_last4: str = "", reference: str = ""
    ) -> IdentityClaim:
        """Normalise raw form or JSON values; raises InvalidIdentifier naming the bad field."""
        return cls(
            last_name=normalise_last_name(last_name),
            date_of_birth=parse_birth_date(date_of_birth),
            zip_code=normalise_zip(zip_code),
            ssn_last4=normalise_ssn_last4(ssn_last4) if ssn_last4.strip() else None,
            reference=normalise_reference(reference) if reference.strip() else None,
        )

    def canonical(self) -> bytes:
        """One unambiguous byte string; the unit separator cannot occur in a normalised field."""
        factor = f"ssn:{self.ssn_last4}" if self.ssn_last4 is not None else f"ref:{self.reference}"
        parts = ("v1", self.last_name, self.date_of_birth.isoformat(), self.zip_code, factor)
        return "\x1f".join(parts).encode("utf-8")


# --- Keys and hashes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Keyring:
    """Versioned master keys: the current one, plus the previous one while a rotation runs."""

    current_version: int
    keys: Mapping[int, bytes]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str) -> Keyring:
        """Read ``NAME``, ``NAME_VERSION`` and the optional ``NAME_PREVIOUS`` (version - 1)."""
        version = int(config[f"{name}_VERSION"])
        keys = {version: decode_key(config[name], f"PORTAL_{name}")}
        if config.get(f"{name}_PREVIOUS"):
            keys[version - 1] = decode_key(config[f"{name}_PREVIOUS"], f"PORTAL_{name}_PREVIOUS")
        return cls(version, keys)

    def subkey(self, purpose: str, version: int | None = None) -> bytes:
        """A key for one purpose only, so that no two uses of the master key can be confused."""
        master = self.keys[self.current_version if version is None else version]
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"portal/{purpose}".encode()).derive(master)


@dataclass(frozen=True)
class Argon2Params:
    time_cost: int
    memory_cost: int
    parallelism: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Argon2Params:
        return cls(config["ARGON2_TIME_COST"], config["ARGON2_MEMORY_COST"], config["ARGON2_PARALLELISM"])


def stretch(message: bytes, salt: bytes, params: Argon2Params) -> bytes:
    """The slow part: one Argon2id evaluation. Module level so import workers can call it."""
    return hash_secret_raw(
        message,
        salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_cost,
        parallelism=params.parallelism,
        hash_len=DIGEST_SIZE,
        type=Type.ID,
    )


class SchemeFields(Protocol):
    """What hashing needs of a scheme: a ``HashScheme``, or a row of its columns (lookups read rows)."""

    @property
    def key_version(self) -> int: ...
    @property
    def salt(self) -> bytes: ...
    @property
    def time_cost(self) -> int: ...
    @property
    def memory_cost(self) -> int: ...
    @property
    def parallelism(self) -> int: ...


def scheme_params(scheme: SchemeFields) -> Argon2Params:
    return Argon2Params(scheme.time_cost, scheme.memory_cost, scheme.parallelism)


class IdentifierHasher:
    """Every keyed hash of an identifier is made here, and nowhere else."""

    def __init__(
        self,
        keyring: Keyring,
        params: Argon2Params,
        concurrency: int = 1,
        wait_seconds: float = 10.0,
        on_slot_wait: Callable[[float, bool], None] | None = None,
    ) -> None:
        self.keyring = keyring
        self.params = params
        self._on_slot_wait = on_slot_wait  # (seconds waited, got a slot): for the metrics
        # Caps Argon2 CPU and memory under a burst; waiting lookups queue here, bounded. Under
        # gunicorn the slots are the server's, shared by its workers; elsewhere this process's own.
        shared = server_hashing_slots()
        self._slots: ServerSlots | threading.BoundedSemaphore = shared or threading.BoundedSemaphore(concurrency)
        self._wait_seconds = wait_seconds
        # Only these long-lived threads run Argon2: glibc keeps a memory arena for every thread
        # that ever hashed, so hashing on request threads would cost m KiB per request thread.
        threads = shared.count if shared else concurrency
        self._threads = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="argon2", initializer=_name_os_thread
        )
        self._subkeys = {
            (purpose, version): keyring.subkey(purpose, version)
            for purpose in ("lookup", "record", "letter", "person", "reference")
            for version in keyring.keys
        }

    def _mac(self, purpose: str, message: bytes, version: int | None = None) -> bytes:
        key = self._subkeys[(purpose, self.keyring.current_version if version is None else version)]
        return hmac.new(key, message, hashlib.sha256).digest()

    def lookup_message(self, claim: IdentityClaim, key_version: int) -> bytes:
        """The keyed (fast) half of the lookup digest; ``stretch`` makes it slow."""
        return self._mac("lookup", claim.canonical(), key_version)

    def lookup_digest(self, claim: IdentityClaim, scheme: SchemeFields) -> bytes:
        return stretch(self.lookup_message(claim, scheme.key_version), scheme.salt, scheme_params(scheme))

    def lookup_digests(self, claim: IdentityClaim, schemes: list[SchemeFields]) -> list[bytes]:
        """One digest per scheme, on the hashing threads; HashingBusy when no turn comes within the wait."""
        started = time.perf_counter()
        acquired = self._slots.acquire(timeout=self._wait_seconds)
        if self._on_slot_wait is not None:
            self._on_slot_wait(time.perf_counter() - started, acquired)
        if not acquired:
            raise HashingBusy()
        try:
            return self._threads.submit(lambda: [self.lookup_digest(claim, s) for s in schemes]).result()
        finally:
            self._slots.release()

    def record_keys(self, record_id: str) -> list[bytes]:
        """The record key under every held key version, current first: finds rows during a rotation."""
        versions = sorted(self.keyring.keys, key=lambda v: v != self.keyring.current_version)
        return [self._mac("record", record_id.encode("utf-8"), v) for v in versions]

    def letter_reference(self, record_id: str) -> str:
        """The reference printed on the letter of a person with no SSN on file.

        Derived, not random, so a re-run or a crash never changes a letter already printed.
        It changes with the identifier key: a rotated (possibly leaked) key means new letters.
        """
        raw = self._mac("letter", record_id.encode("utf-8"))[:15]
        return base64.b32encode(raw).decode("ascii").translate(_TO_CROCKFORD)

    def reference_digest(self, reference: str) -> bytes:
        """What the database keeps of a person's letter reference (normalised): enough to check one
        typed in, useless for printing one. A plain HMAC: the reference carries 120 random bits."""
        return self._mac("reference", reference.encode("ascii"))

    def person_bucket(self, last_name: str, date_of_birth: date) -> str:
        """A keyed hash of name and birth date for failure counters: the same whether or not the person exists."""
        return self._mac("person", f"{last_name}\x1f{date_of_birth.isoformat()}".encode()).hex()


def _name_os_thread() -> None:
    """Give the OS thread its Python name ("argon2_0"): ``top -H`` and the benchmarks then tell the
    hashing threads' CPU from the requests' (Linux; elsewhere the thread keeps its process's name)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(threading.current_thread().name[:15])


def current_scheme(session: Session, hasher: IdentifierHasher) -> HashScheme:
    """The scheme new records are hashed with, created on first use (call before other writes)."""
    params = hasher.params
    scheme = session.scalar(
        select(HashScheme).filter_by(
            key_version=hasher.keyring.current_version,
            time_cost=params.time_cost,
            memory_cost=params.memory_cost,
            parallelism=params.parallelism,
        )
    )
    if scheme is None:
        scheme = HashScheme(
            key_version=hasher.keyring.current_version,
            time_cost=params.time_cost,
            memory_cost=params.memory_cost,
            parallelism=params.parallelism,
            salt=secrets.token_bytes(16),
            active=True,
        )
        session.add(scheme)
        try:
            session.flush()
        except IntegrityError:
            # Another importer (another shard) created it at the same moment: use theirs.
            session.rollback()
            return current_scheme(session, hasher)
    elif not scheme.active:
        scheme.active = True
    return scheme


# Built once: these run on every verification, and building a statement costs more than running it.
# Core, not ORM: a lookup only reads these rows, and loading them as objects cost more than the SQL.
_schemes, _patients = HashScheme.__table__.c, Patient.__table__
ACTIVE_SCHEMES = select(
    _schemes.key_version, _schemes.salt, _schemes.time_cost, _schemes.memory_cost, _schemes.parallelism
).where(_schemes.active)
# One active scheme, one digest (the usual case): an equality, which SQLAlchemy runs from its cache
# as it is, where an expanding IN is rewritten on every execution.
PATIENT_BY_DIGEST = select(_patients).where(_patients.c.lookup_digest == bindparam("digest")).limit(1)
PATIENT_BY_DIGESTS = (
    select(_patients).where(_patients.c.lookup_digest.in_(bindparam("digests", expanding=True))).limit(1)
)
NEW_VERIFICATION = insert(Verification.__table__)
EXPIRED_VERIFICATIONS_SWEPT = 20  # per new verification: more than are created, so the table stays small
# After a sweep that left no expired row behind, new verifications on the same database connection
# skip it this long: a DELETE that finds nothing cost as much as the INSERT it comes with.
SWEEP_PAUSE_SECONDS = 1.0
_NEXT_SWEEP = "portal.next_sweep"  # in the pooled connection's info: when it sweeps again
_verifications = Verification.__table__.c
SWEEP_EXPIRED = delete(Verification.__table__).where(
    _verifications.id.in_(
        select(_verifications.id)
        .where(_verifications.expires_at <= bindparam("now"))
        .limit(EXPIRED_VERIFICATIONS_SWEPT)
        .with_for_update(skip_locked=True)  # concurrent sweeps take different rows, never wait (PostgreSQL)
        .scalar_subquery()
    )
)


def lookup_schemes(session: Session, hasher: IdentifierHasher) -> list[SchemeFields]:
    """The schemes a verification must try: every active one whose key we hold.

    With none in the database yet, an unsaved scheme of the current parameters stands in,
    so that even an empty portal spends the same time on every attempt.
    """
    rows = session.connection().execute(ACTIVE_SCHEMES)
    schemes: list[SchemeFields] = [s for s in rows if s.key_version in hasher.keyring.keys]
    if schemes:
        return schemes
    return [
        HashScheme(
            key_version=hasher.keyring.current_version,
            time_cost=hasher.params.time_cost,
            memory_cost=hasher.params.memory_cost,
            parallelism=hasher.params.parallelism,
            salt=bytes(16),
        )
    ]


# --- Verification --------------------------------------------------------------------------------


def find_patient(session: Session, hasher: IdentifierHasher, claim: IdentityClaim) -> Row[Any] | None:
    """The ``patients`` row whose identifiers match the claim, or None.

    Always the same work: one Argon2id per active scheme and one indexed query, whether the
    person is unknown or one field is wrong. Callers must answer both cases identically.
    """
    schemes = lookup_schemes(session, hasher)
    digests = hasher.lookup_digests(claim, schemes)
    if len(digests) == 1:
        return session.connection().execute(PATIENT_BY_DIGEST, {"digest": digests[0]}).first()
    return session.connection().execute(PATIENT_BY_DIGESTS, {"digests": digests}).first()


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def start_verification(
    session: Session,
    patient: Patient | Row[Any],
    channel: str,
    ttl_seconds: int,
    api_key_id: int | None = None,
    with_letter: bool = False,
) -> str:
    """Remember a success; return the opaque token the client keeps (only its SHA-256 is stored).

    The token works only on ``channel`` and, for the API, with the key ``api_key_id``: a token made
    on the website, or with another partner's key, is as unknown to a claim as a made-up one.

    Each new verification also deletes a few expired ones (an index range on ``expires_at``), so
    the table holds the live verifications and little else, without a job to schedule; once a sweep
    finds fewer than its limit, the connection pauses sweeping for ``SWEEP_PAUSE_SECONDS``.
    """
    token = secrets.token_urlsafe(32)
    now = utcnow()
    connection = session.connection()
    if time.monotonic() >= connection.info.get(_NEXT_SWEEP, 0.0):
        if connection.execute(SWEEP_EXPIRED, {"now": now}).rowcount < EXPIRED_VERIFICATIONS_SWEPT:
            connection.info[_NEXT_SWEEP] = time.monotonic() + SWEEP_PAUSE_SECONDS
    # Core, in the session's transaction: nothing reads the row back, so the ORM has nothing to do.
    connection.execute(
        NEW_VERIFICATION,
        {
            "token_digest": _token_digest(token),
            "patient_id": patient.id,
            "channel": channel,
            "api_key_id": api_key_id,
            "with_letter": with_letter,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl_seconds),
        },
    )
    session.commit()
    return token


def _live_verification(api_key: bool) -> Select[tuple[Verification]]:
    v = Verification
    return select(v).where(
        v.token_digest == bindparam("digest"),
        v.expires_at > bindparam("now"),
        v.channel == bindparam("channel"),
        v.api_key_id == bindparam("api_key_id") if api_key else v.api_key_id.is_(None),
    )


# Built once: the exposure page and every claim run one, and building it cost as much as running it.
LIVE_VERIFICATION = {False: _live_verification(api_key=False), True: _live_verification(api_key=True)}


def live_verification(
    session: Session, token: str | None, channel: str, api_key_id: int | None = None
) -> Verification | None:
    """The live verification behind ``token`` made on ``channel`` (with ``api_key_id``), or None
    when absent, unknown, expired or made elsewhere."""
    if not token or len(token) > 100:
        return None
    return session.scalar(
        LIVE_VERIFICATION[api_key_id is not None],
        {"digest": _token_digest(token), "now": utcnow(), "channel": channel, "api_key_id": api_key_id},
    )


def verified_patient(
    session: Session, token: str | None, channel: str, api_key_id: int | None = None
) -> Patient | None:
    """The patient behind a live verification token made on ``channel`` (see ``live_verification``)."""
    verification = live_verification(session, token, channel, api_key_id)
    return session.get(Patient, verification.patient_id) if verification else None


def give_letter_reference(session: Session, hasher: IdentifierHasher, verification: Verification, text: str) -> bool:
    """Step up a verification with the reference typed from the person's letter; True when it is theirs.

    The stolen records do not hold it, so it tells the person from whoever holds their details.
    A person without a stored reference (no letter was printed with one) can never step up here.
    """
    try:
        reference = normalise_reference(text)
    except InvalidIdentifier:
        return False
    stored = session.scalar(select(Patient.reference_digest).where(Patient.id == verification.patient_id))
    if stored is None or not hmac.compare_digest(stored, hasher.reference_digest(reference)):
        return False
    verification.with_letter = True
    session.commit()
    return True


def retire_unused_schemes(session: Session, keep_id: int) -> None:
    """Stop trying schemes no record uses any more (after a re-hash), so lookups stay one hash."""
    unused = ~select(Patient.id).where(Patient.scheme_id == HashScheme.id).exists()
    session.execute(update(HashScheme).where(HashScheme.id != keep_id, HashScheme.active, unused).values(active=False))


def end_verification(session: Session, token: str | None) -> None:
    """Sign out: the token stops working at once, not only when it expires."""
    if token and len(token) <= 100:
        session.execute(delete(Verification).where(Verification.token_digest == _token_digest(token)))
        session.commit()
