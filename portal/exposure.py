"""The exposed-field vocabulary and plain-language guidance for each field.

The breach file lists, per patient, which kinds of data were exposed, as ';'-separated
tokens ("name;date_of_birth;ssn"). The database stores that list as a bitmask whose bit
positions are the positions in FIELDS, so the order of FIELDS is permanent: append new
fields at the end, never reorder or remove one.

Every user-facing string is wrapped in lazy_gettext so it can be translated; a lazy
string is evaluated when rendered, in the request's locale (English with no app).
Guidance is written for US residents at about an eighth-grade reading level: short
sentences, one action per step, most important step first, official links only.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask_babel import LazyString
from flask_babel import lazy_gettext as _l


@dataclass(frozen=True)
class Step:
    """One protective action, optionally with an official https link."""

    text: LazyString
    link: str | None = None
    link_text: LazyString | None = None


@dataclass(frozen=True)
class ExposedField:
    """One kind of exposed data: its CSV token, permanent bit and guidance."""

    name: str
    bit: int
    label: LazyString
    risk: LazyString
    steps: tuple[Step, ...]


# --- steps shared by several fields ------------------------------------------------
_FRAUD_ALERT = Step(
    _l(
        "Place a free fraud alert by contacting one credit bureau (Equifax, Experian or "
        "TransUnion). It tells lenders to check it is really you before they open credit "
        "in your name. The bureau you contact tells the other two."
    ),
    "https://consumer.ftc.gov/articles/what-know-about-credit-freezes-and-fraud-alerts",
    _l("Credit freezes and fraud alerts (FTC)"),
)
_CREDIT_REPORTS = Step(
    _l(
        "Check your credit reports for accounts or credit checks you do not recognize. "
        "You can get them free every week."
    ),
    "https://www.annualcreditreport.com",
    _l("AnnualCreditReport.com"),
)
_WATCH_MAIL = Step(
    _l(
        "Open your mail and look for bills, collection letters or account notices for "
        "things you did not buy or sign up for."
    ),
)
_REPORT_ID_THEFT = Step(
    _l(
        "If someone uses your information, report it to the Federal Trade Commission. "
        "You will get a recovery plan and a report to show banks and the police."
    ),
    "https://www.identitytheft.gov",
    _l("IdentityTheft.gov"),
)
_READ_EOB = Step(
    _l(
        "Read every Explanation of Benefits (EOB) statement from your health plan. Look "
        "for doctor visits, tests, equipment or prescriptions you did not get."
    ),
)

# --- the vocabulary, in permanent bit order ----------------------------------------
FIELDS: tuple[ExposedField, ...] = (
    ExposedField(
        name="name",
        bit=1 << 0,
        label=_l("Name"),
        risk=_l(
            "Your name alone is not very useful to a criminal. With your other details, "
            "it helps them pretend to be you or make scam messages look real."
        ),
        steps=(
            Step(
                _l("Be careful with calls, texts and emails that use your name and ask for personal details or money."),
            ),
            _WATCH_MAIL,
            _FRAUD_ALERT,
        ),
    ),
    ExposedField(
        name="date_of_birth",
        bit=1 << 1,
        label=_l("Date of birth"),
        risk=_l(
            "Many companies use your date of birth to check who you are. With your name "
            "and address, a criminal may use it to open accounts in your name."
        ),
        steps=(
            _FRAUD_ALERT,
            _CREDIT_REPORTS,
            Step(
                _l(
                    "Do not use your date of birth as a password, PIN or answer to a "
                    "security question. Change any that do."
                ),
            ),
        ),
    ),
    ExposedField(
        name="address",
        bit=1 << 2,
        label=_l("Home address"),
        risk=_l(
            "With your name, your address helps a criminal pretend to be you, send you "
            "scam letters, or change where your mail goes to steal bills and statements."
        ),
        steps=(
            _WATCH_MAIL,
            Step(
                _l(
                    "Sign up for USPS Informed Delivery. It is free and emails you a picture "
                    "of each letter before it arrives, so you notice missing mail."
                ),
                "https://informeddelivery.usps.com",
                _l("USPS Informed Delivery"),
            ),
            Step(
                _l(
                    "If your mail suddenly stops, contact your local post office. Someone "
                    "may have asked to forward your mail."
                ),
            ),
            _FRAUD_ALERT,
        ),
    ),
    ExposedField(
        name="phone",
        bit=1 << 3,
        label=_l("Phone number"),
        risk=_l(
            "Scammers may call or text you pretending to be us, your doctor or your "
            "insurer. They may also try to move your number to their own phone to get "
            "your security codes."
        ),
        steps=(
            Step(
                _l("We will never call you to ask for your Social Security number. If someone does, hang up."),
            ),
            Step(
                _l(
                    "If a call or text says it is from us, your doctor or your insurer, hang "
                    "up. Call back using the number on their official website or your card."
                ),
            ),
            Step(
                _l(
                    "Ask your mobile carrier to add a PIN to your account and to turn on a "
                    "port-out or SIM lock. This stops anyone moving your number to "
                    "another phone."
                ),
            ),
            Step(_l("Forward scam texts to 7726 (SPAM) so your carrier can block them.")),
        ),
    ),
    ExposedField(
        name="ssn",
        bit=1 << 4,
        label=_l("Social Security number"),
        risk=_l(
            "This is the most serious kind of exposure. With your Social Security number, "
            "a criminal can open credit or loans in your name, steal your tax refund, or "
            "use it to get a job or benefits as you."
        ),
        steps=(
            Step(
                _l(
                    "Freeze your credit at Equifax. A freeze is free and stops new credit "
                    "being opened in your name. You can lift it when you apply for credit."
                ),
                "https://www.equifax.com/personal/credit-report-services/credit-freeze/",
                _l("Equifax credit freeze"),
            ),
            Step(
                _l("Freeze your credit at Experian too. Each bureau needs its own freeze."),
                "https://www.experian.com/freeze/center.html",
                _l("Experian credit freeze"),
            ),
            Step(
                _l("Freeze your credit at TransUnion too, so all three bureaus are frozen."),
                "https://www.transunion.com/credit-freeze",
                _l("TransUnion credit freeze"),
            ),
            Step(
                _l(
                    "Get an Identity Protection PIN from the IRS. Without it, no one can "
                    "file a tax return using your Social Security number."
                ),
                "https://www.irs.gov/identity-theft-fraud-scams/get-an-identity-protection-pin",
                _l("Get an IRS Identity Protection PIN"),
            ),
            _CREDIT_REPORTS,
            Step(
                _l(
                    "Create a my Social Security account and check that the earnings on "
                    "your statement are yours. Wrong earnings can mean someone is working "
                    "under your number."
                ),
                "https://www.ssa.gov/myaccount/",
                _l("my Social Security"),
            ),
            _REPORT_ID_THEFT,
        ),
    ),
    ExposedField(
        name="email",
        bit=1 << 5,
        label=_l("Email address"),
        risk=_l(
            "Criminals may send you fake emails that look like they come from us, your "
            "doctor or your insurer, to steal your passwords or money. This is called "
            "phishing."
        ),
        steps=(
            Step(
                _l(
                    "Do not click links or open attachments in surprise emails about this "
                    "breach. Type the website address yourself instead."
                ),
                "https://consumer.ftc.gov/articles/how-recognize-and-avoid-phishing-scams",
                _l("How to spot phishing (FTC)"),
            ),
            Step(
                _l("Turn on multi-factor authentication for your email, so a password alone is not enough to get in."),
            ),
            Step(
                _l("If you use the same password on more than one site, change it, starting with your email account."),
            ),
        ),
    ),
    ExposedField(
        name="medical_record_number",
        bit=1 << 6,
        label=_l("Medical record number"),
        risk=_l(
            "A criminal could use it to get medical care or prescriptions in your name. "
            "This is called medical identity theft. It can put wrong information in your "
            "health records."
        ),
        steps=(
            _READ_EOB,
            Step(
                _l(
                    "Ask your doctors and hospitals for a copy of your records. Check them "
                    "for visits, test results or conditions that are not yours."
                ),
            ),
            Step(
                _l(
                    "Ask your providers for an accounting of disclosures. It lists who they "
                    "shared your health information with."
                ),
            ),
            _REPORT_ID_THEFT,
        ),
    ),
    ExposedField(
        name="health_insurance",
        bit=1 << 7,
        label=_l("Health insurance information"),
        risk=_l(
            "A criminal could use your insurance details to bill your plan for care they "
            "get. This can use up your benefits and put false entries in your records."
        ),
        steps=(
            _READ_EOB,
            Step(
                _l(
                    "If you see care you did not get, call your insurer using the number on "
                    "your card. Ask whether you should get a new member ID."
                ),
            ),
            Step(
                _l("If you have Medicare, check your claims and report anything wrong to Medicare at 1-800-MEDICARE."),
                "https://www.medicare.gov/basics/reporting-medicare-fraud-and-abuse",
                _l("Report Medicare fraud"),
            ),
            Step(
                _l(
                    "Give your member ID only to doctors, pharmacies and plans you know. "
                    "Never give it to someone who calls you out of the blue."
                ),
            ),
        ),
    ),
    ExposedField(
        name="clinical_data",
        bit=1 << 8,
        label=_l("Health and treatment information"),
        risk=_l(
            "Private details about your health, such as conditions, test results or "
            "medicines, were exposed. A criminal may threaten to make them public "
            "unless you pay."
        ),
        steps=(
            Step(
                _l(
                    "If someone threatens to share your health information unless you pay, "
                    "do not pay and do not reply. Report it to the FBI."
                ),
                "https://www.ic3.gov",
                _l("FBI Internet Crime Complaint Center"),
            ),
            Step(
                _l(
                    "Questions or worries about what was exposed? Call our help line or write to our "
                    "privacy office. The number and the address are at the bottom of every page."
                ),
            ),
            Step(
                _l(
                    "Be careful with calls or emails that mention your health. Scammers may "
                    "use these details to sound trustworthy."
                ),
            ),
        ),
    ),
)

ALL_FIELDS_MASK: int = (1 << len(FIELDS)) - 1

_BY_NAME: dict[str, ExposedField] = {field.name: field for field in FIELDS}
_EXPECTED = ", ".join(field.name for field in FIELDS)


def _check_bits() -> None:
    """Fail at import, not in stored data, if an edit moves a bit away from its position."""
    for position, field in enumerate(FIELDS):
        if field.bit != 1 << position:
            raise RuntimeError(f"exposed field {field.name!r} must have bit 1 << {position}")


_check_bits()


def parse_exposed_fields(text: str) -> int:
    """';'-separated tokens -> bitmask.

    Tolerates surrounding spaces and any case, and ignores empty tokens, because breach
    files are assembled by hand. Raises ValueError('unknown exposed field (item 2); expected
    one of: ...') for an unknown token, so a typo stops the import instead of silently
    hiding guidance, and ValueError('exposed_fields is empty') when nothing is listed,
    since every affected patient had at least their name exposed.
    """
    mask = 0
    for position, raw in enumerate(text.split(";"), start=1):
        token = raw.strip()
        if not token:
            continue
        field = _BY_NAME.get(token.lower())
        if field is None:
            # Named by position, not quoted: a misaligned file could hold an identifier here.
            raise ValueError(f"unknown exposed field (item {position}); expected one of: {_EXPECTED}")
        mask |= field.bit
    if not mask:
        raise ValueError("exposed_fields is empty")
    return mask


def fields_in(mask: int) -> tuple[ExposedField, ...]:
    """The fields whose bits are set in `mask`, in FIELDS order.

    Raises ValueError for a negative mask or an unknown bit: a value we cannot explain
    means the database and this code disagree, and dropping it would hide guidance.
    """
    _check_mask(mask)
    return tuple(field for field in FIELDS if mask & field.bit)


def _check_mask(mask: int) -> None:
    """Reject masks with bits outside the vocabulary."""
    if mask < 0 or mask & ~ALL_FIELDS_MASK:
        raise ValueError(f"exposed-field mask {mask} has bits outside the vocabulary")
