"""The partner API's sandbox: people reserved for practice, and requests that practise every answer.

The demo imports the people beside its synthetic patients and prints the requests; the README's
"Try it" section holds the same requests word for word, and ``tests/test_demo.py`` walks them
against a running demo. The people are fixed, not drawn, so that the examples can spell them out;
the website's visitors are shown other people, so an integrator who spends a person's failure
limit spoils nobody's visit. The requests read ``$API``, ``$KEY``, ``$SLOW_KEY``, ``$REFERENCE``
and ``$TOKEN`` from the shell, as the demo prints them. No HTTP here.
"""

from __future__ import annotations

from dataclasses import dataclass

from portal.synthetic import PATIENT_HEADER

SANDBOX_PEOPLE: tuple[dict[str, str], ...] = tuple(
    dict(zip(PATIENT_HEADER, row, strict=True))
    for row in (
        ("SANDBOX-1", "Alex", "Example-Doe", "1970-01-31", "123-45-1234", "1 Sandbox Way", "New York", "NY",
         "10001", "", "name;date_of_birth;address;ssn"),
        ("SANDBOX-2", "María", "García-López", "1980-04-23", "123-45-6789", "2 Sandbox Way", "Springfield", "IL",
         "62704-1234", "(217) 555-0134", "name;date_of_birth;address;phone;ssn"),
        ("SANDBOX-3", "John", "O'Brien", "1955-12-24", "", "3 Sandbox Way", "Denver", "CO", "80202", "",
         "name;date_of_birth;address;phone"),
        ("SANDBOX-4", "Lan", "Nguyễn", "1992-07-04", "123-45-4321", "4 Sandbox Way", "San Francisco", "CA",
         "94110", "", "name;date_of_birth;address"),
    )
)  # fmt: skip
NO_SSN_PERSON = "SANDBOX-3"  # verifies with the reference printed on their letter
PRACTICE = {
    "SANDBOX-1": "a verification and a claim",
    "SANDBOX-2": "other spellings of the same person",
    "SANDBOX-3": "no SSN on file: the letter's reference instead",
    "SANDBOX-4": "retries and the failure limit (then 15 minutes' wait)",
}


@dataclass(frozen=True)
class Practice:
    title: str
    command: str
    answer: str  # what comes back, as the README writes it after "# → "


_KEY = '-H "Authorization: Bearer $KEY"'
_JSON = "-H 'Content-Type: application/json'"
_VERIFY = f'curl -sS "$API/verifications" {_KEY} {_JSON}'
_CLAIM = f'curl -sS "$API/claims" {_KEY} {_JSON}'
_EXAMPLE_DOE = '{"last_name": "Example-Doe", "date_of_birth": "1970-01-31", "zip_code": "10001", "ssn_last4": "1234"}'
_NGUYEN = '\\"last_name\\": \\"Nguyễn\\", \\"date_of_birth\\": \\"1992-07-04\\", \\"zip_code\\": \\"94110\\"'
_RETRIED = "-H 'Idempotency-Key: b7d4e2f1-9c8a-4b3d-a6e5-2f1c0d9b8a70' -d " + (
    '\'{"last_name": "Nguyễn", "date_of_birth": "1992-07-04", "zip_code": "94110", "ssn_last4": "0000"}\''
)
_INVALID = '{"last_name": "Example-Doe", "date_of_birth": "1970-01-31", "zip_code": 10001}'
_TOKEN_BODY = '"{\\"claim_token\\": \\"$TOKEN\\"}"'  # noqa: S105 (the shell's $TOKEN)
_VERIFIED = '{"verified": true, "exposed_fields": [...], "claim_token": "…", "expires_at": "…"}'
_CODE = '{"activation_code": "…", "product": "…", "enroll_by": "…", "coverage_months": 24, "enrollment_url": "…"}'

PRACTICES: tuple[Practice, ...] = (
    Practice("Verify a person (keep the claim_token as TOKEN)",
             f"{_VERIFY} -H 'Idempotency-Key: 8e2b9d0c-5a71-4f4e-9a4b-1d6f3c2a7b10' -d '{_EXAMPLE_DOE}'",
             '200 {"verified": true, "exposed_fields": ["name", "date_of_birth", "address", "ssn"], '
             '"claim_token": "…", "expires_at": "…"}'),
    Practice("Claim their code",
             f"{_CLAIM} -H 'Idempotency-Key: 3c1f7a9e-0b2d-4e6f-8a5c-7d9e1f2a3b40' -d {_TOKEN_BODY}",
             f"201 {_CODE}"),
    Practice("Claim again: the same code",
             f"{_CLAIM} -d {_TOKEN_BODY}", f"200 {_CODE}"),
    Practice("The same person spelt otherwise",
             f"{_VERIFY} -d '{{\"last_name\": \"garcia lopez\", \"date_of_birth\": \"1980-04-23\", "
             f"\"zip_code\": \"62704-1234\", \"ssn_last4\": \"6789\"}}'", f"200 {_VERIFIED}"),
    Practice("No SSN on file: the letter's reference",
             f"{_VERIFY} -d \"{{\\\"last_name\\\": \\\"O'Brien\\\", \\\"date_of_birth\\\": \\\"1955-12-24\\\", "
             f"\\\"zip_code\\\": \\\"80202\\\", \\\"reference\\\": \\\"$REFERENCE\\\"}}\"", f"200 {_VERIFIED}"),
    Practice("The program's facts, in Spanish",
             f'curl -sS "$API/program" {_KEY} -H \'Accept-Language: es\'', "200 Content-Language: es"),
    Practice("A wrong guess, with an Idempotency-Key", f"{_VERIFY} {_RETRIED}", '200 {"verified": false}'),
    Practice("The same request again: its first answer, not counted again",
             f"{_VERIFY} {_RETRIED}", "200 Idempotent-Replayed: true"),
    Practice("Four more wrong guesses: five failures in all",
             f"for n in 1 2 3 4; do curl -sS -o /dev/null -w '%{{http_code}} ' \"$API/verifications\" {_KEY} {_JSON} "
             f"-d \"{{{_NGUYEN}, \\\"ssn_last4\\\": \\\"000$n\\\"}}\"; done; echo", "200 200 200 200"),
    Practice("The next attempt, even with the right digits: the failure limit",
             f"{_VERIFY} -d '{{\"last_name\": \"Nguyễn\", \"date_of_birth\": \"1992-07-04\", \"zip_code\": \"94110\", "
             f"\"ssn_last4\": \"4321\"}}'", "429 failure-limit"),
    Practice("Malformed JSON", f"{_VERIFY} -d '{{\"last_name\":'", "400 malformed"),
    Practice("No key", 'curl -sS "$API/program"', "401 unauthorized"),
    Practice("A key without the claim scope",
             f'curl -sS "$API/claims" -H "Authorization: Bearer $SLOW_KEY" {_JSON} -d \'{{"claim_token": "x"}}\'',
             "403 forbidden"),
    Practice("No such endpoint", f'curl -sS "$API/nowhere" {_KEY}', "404 not-found"),
    Practice("A method the endpoint does not take", f'curl -sS -X DELETE "$API/claims" {_KEY}',
             "405 method-not-allowed"),
    Practice("A body over 4 KiB, even in chunks",
             f"head -c 5000 /dev/zero | {_CLAIM} -H 'Transfer-Encoding: chunked' --data-binary @-", "413 too-large"),
    Practice("Not JSON", f"curl -sS \"$API/claims\" {_KEY} -d 'claim_token=x'", "415 unsupported-media-type"),
    Practice("Fields missing or invalid",
             f"{_VERIFY} -d '{_INVALID}'",
             "422 invalid-fields"),
    Practice("An Idempotency-Key used with another body",
             f"{_VERIFY} -H 'Idempotency-Key: 8e2b9d0c-5a71-4f4e-9a4b-1d6f3c2a7b10' -d "
             f"'{_EXAMPLE_DOE.replace('1234', '9999')}'", "422 idempotency-key-reused"),
    Practice("Five requests with the 5-a-minute key",
             "for n in 1 2 3 4 5; do curl -sS -o /dev/null -w '%{http_code} ' \"$API/program\" "
             '-H "Authorization: Bearer $SLOW_KEY"; done; echo', "200 200 200 200 200"),
    Practice("The sixth: the key's own rate", 'curl -sS "$API/program" -H "Authorization: Bearer $SLOW_KEY"',
             "429 rate-limited"),
)  # fmt: skip
