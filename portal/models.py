"""The schema. It holds keyed hashes, flags, ciphertexts and opaque ids — never an identifier.

Each column that is derived from a person says from what, so a reviewer can check that a dump
of these tables is useless without the keys that live only in the app's configuration.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Store naive UTC (SQLite has no time zones) and hand back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use portal.models.utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def new_public_id() -> str:
    return secrets.token_hex(16)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class HashScheme(Base):
    """One identifier key version with one set of Argon2id parameters.

    Records point at the scheme they were hashed with, so parameters can rise and keys can
    rotate by re-importing; verification hashes once per *active* scheme, the same for everyone.
    """

    __tablename__ = "hash_schemes"
    __table_args__ = (UniqueConstraint("key_version", "time_cost", "memory_cost", "parallelism"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key_version: Mapped[int] = mapped_column(Integer)
    time_cost: Mapped[int] = mapped_column(Integer)
    memory_cost: Mapped[int] = mapped_column(Integer)  # KiB
    parallelism: Mapped[int] = mapped_column(Integer)
    salt: Mapped[bytes] = mapped_column(LargeBinary(16))  # public; the secret is the HMAC key
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Patient(Base):
    """An affected person, as far as the portal needs to know them."""

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Random; the only reference to a person that leaves the database (sessions, logs, audit).
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    # HMAC of the vendor's record_id: makes the import idempotent without storing the id.
    record_key: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    scheme_id: Mapped[int] = mapped_column(ForeignKey("hash_schemes.id"), index=True)
    # Argon2id(HMAC(normalised last name, date of birth, ZIP, SSN last four or letter reference)).
    lookup_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    exposed_fields: Mapped[int] = mapped_column(Integer)  # bit mask, see portal.exposure.FIELDS
    # HMAC of the reference printed on this person's letter (``portal.identity.LetterCheck``), when
    # the import wrote one: the step-up a thief holding the stolen rows cannot answer. 120 random
    # bits, so a plain keyed hash is enough (ASVS 6.5.2); unique, so it can find a person later.
    reference_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True, index=True)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ActivationCode(Base):
    """One vendor activation code of the pool, encrypted at rest.

    The partial unique index on ``patient_id`` makes a second code for one person impossible
    whatever the application does; the claim itself takes the row under a lock.
    """

    __tablename__ = "activation_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    # HMAC of the code: rejects duplicates on import without storing the code in clear.
    code_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)  # AES-256-GCM nonce || ciphertext
    key_version: Mapped[int] = mapped_column(Integer)
    product: Mapped[str] = mapped_column(String(80))
    enroll_by: Mapped[date] = mapped_column(Date)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when the person reported that someone else used this code: it stays theirs (for the
    # provider's export and the audit trail), never returns to the pool, and frees them to claim another.
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(
            "uq_activation_codes_patient_id",
            "patient_id",
            unique=True,
            sqlite_where=patient_id.is_not(None) & revoked_at.is_(None),
            postgresql_where=patient_id.is_not(None) & revoked_at.is_(None),
        ),
        Index(
            "ix_activation_codes_revoked_at",
            "revoked_at",
            sqlite_where=revoked_at.is_not(None),
            postgresql_where=revoked_at.is_not(None),
        ),
        Index(
            "ix_activation_codes_available",
            "enroll_by",
            "id",
            sqlite_where=patient_id.is_(None),
            postgresql_where=patient_id.is_(None),
        ),
    )


class Verification(Base):
    """A successful verification, referenced from the browser by an opaque token.

    Only the token's SHA-256 is stored, so a dump does not let anyone resume someone's session.
    """

    __tablename__ = "verifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    # Where the verification was made: a token works only there (the surface, and for the API the key).
    channel: Mapped[str] = mapped_column(String(16))
    api_key_id: Mapped[int | None] = mapped_column(Integer)  # ApiKey.id, for a verification made through the API
    # Made with the letter's reference (as the lookup factor, or given as a step-up since).
    with_letter: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Staff(Base):
    """A call-center agent or supervisor. Only hashes and a sealed TOTP secret are kept.

    ``session_version`` is copied into each login's session; bumping it (logout, disable, MFA
    reset) ends every session of this person at once, although sessions live in signed cookies.
    """

    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # agent | supervisor
    password_hash: Mapped[str] = mapped_column(String(200))  # argon2-cffi PasswordHasher
    totp_secret: Mapped[bytes] = mapped_column(LargeBinary)  # AES-256-GCM nonce || ciphertext
    totp_key_version: Mapped[int] = mapped_column(Integer)
    # The last 30-second step a TOTP code was accepted for: a code is never accepted twice.
    last_totp_step: Mapped[int] = mapped_column(BigInteger, default=0)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    session_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StaffApproval(Base):
    """A console action on a supervisor's account, waiting for a second supervisor to approve it.

    One supervisor alone cannot disable, re-enable or reset another: the request is kept here
    until a different supervisor (neither the requester nor the target) approves it, or it lapses.
    """

    __tablename__ = "staff_approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(16))  # disable | enable | reset-mfa
    target_id: Mapped[int] = mapped_column(ForeignKey("staff.id"), index=True)
    requested_by: Mapped[int] = mapped_column(ForeignKey("staff.id"))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    approved_by: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """One security event, chained: ``chain_hash`` = HMAC(audit key, ``prev_hash`` || this row's fields).

    ``(lane, position)`` is where the row stands in the trail: lane 1 to 64, each a chain of its own
    (``portal.audit``), and the position in it (1, 2, 3 ...), given by the lane's ``audit_chain_head``
    row and never by the database, so a deleted row leaves a gap and an inserted one breaks the next link.
    """

    __tablename__ = "audit_events"

    lane: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    position: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)  # staff:7, api-key:3, public:<session>, cli:<user>
    action: Mapped[str] = mapped_column(String(40), index=True)
    outcome: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(16))
    record_ref: Mapped[str | None] = mapped_column(String(32), index=True)  # Patient.public_id
    client: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    chain_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditChainHead(Base):
    """A lane's head, the row its writers lock to append: position and hash of the lane's newest event."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(primary_key=True)  # the lane, 1 to 64
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class LetterRecord(Base):
    """What replacing a lost letter needs, kept only for people with no SSN on file.

    Such a person can verify only with the reference printed on their letter. To find their
    record without it, ``locate_digest`` is an HMAC of the normalised last name, birth date and
    ZIP (not unique: two people may share them, and then nobody is identified). The vendor's
    record id, which the mail house needs, is kept sealed (AES-256-GCM) for this alone.
    """

    __tablename__ = "letter_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), unique=True)
    locate_digest: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    sealed_record_id: Mapped[bytes] = mapped_column(LargeBinary)  # nonce || ciphertext
    key_version: Mapped[int] = mapped_column(Integer)  # of the identifier key
    reissue_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A partner's API key. The key itself is shown once, at creation, and never stored.

    ``prefix`` is public (it starts the key and names it in listings and logs); ``digest`` is the
    SHA-256 of the whole key, compared in constant time after the prefix found the row. A key
    of 256 random bits needs no slow hash: nobody can guess one, with or without the digest.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    partner: Mapped[str] = mapped_column(String(80))
    scopes: Mapped[str] = mapped_column(String(80))  # space-separated: verify, claim
    rate: Mapped[str] = mapped_column(String(80))  # a Flask-Limiter limit string, e.g. "120/minute"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotentRequest(Base):
    """A partner request sent with an ``Idempotency-Key``, kept 24 hours so that a retry gets its answer.

    Nothing here names a person or opens without the request itself: ``slot`` is a keyed hash of
    the key's id and the Idempotency-Key, ``fingerprint`` a keyed hash of those and the body, and
    ``answer`` the answer sealed under a key derived from them (``portal.idempotency``). Neither
    the Idempotency-Key nor the body is stored.
    """

    __tablename__ = "idempotent_requests"

    slot: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary(32))
    owner: Mapped[bytes] = mapped_column(LargeBinary(16))  # the request answering it, while none has
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    status: Mapped[int | None] = mapped_column(Integer)  # None while the first request is being answered
    answer: Mapped[bytes | None] = mapped_column(LargeBinary)  # nonce || AES-256-GCM of the JSON answer


class PoolCount(Base):
    """How many codes, and how many of them claimed, the pool holds per enrol-by date.

    Kept by the database itself (triggers on ``activation_codes``, migration ``pool_counts``), so
    every write counts, whoever makes it, and the pool gauge reads a few rows instead of counting
    millions (``portal.claims.pool_status``). A row per date and ``slot`` (the code's id modulo
    64): concurrent claims take codes of neighbouring ids, so they raise
    different rows and do not queue on one; readers add the slots up.
    """

    __tablename__ = "pool_counts"

    enroll_by: Mapped[date] = mapped_column(Date, primary_key=True)
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    codes: Mapped[int] = mapped_column(BigInteger)
    claimed: Mapped[int] = mapped_column(BigInteger)


class HourlyCount(Base):
    """How many events of one kind happened in one hour, on one surface.

    No person, address, key or staff member: only counts, so they outlive the retention purge
    and still show how the programme went. One row per (hour, action, outcome, channel) and audit
    lane, raised by an UPSERT from ``portal.events.record``; readers add the lanes up.
    """

    __tablename__ = "hourly_counts"

    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)  # the hour's start, UTC
    action: Mapped[str] = mapped_column(String(32), primary_key=True)  # verification, exposure, claim, alert...
    outcome: Mapped[str] = mapped_column(String(48), primary_key=True)  # success, failure, throttled:..., ...
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)  # public, agent, api, cli
    # The audit lane the event was appended to: its lock covers this row, so no counter is a queue.
    lane: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False, default=1)
    count: Mapped[int] = mapped_column(Integer)
