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

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from flask_babel import LazyString
from flask_babel import lazy_gettext as _l


@dataclass(frozen=True)
class Link:
    """An official https page."""

    url: str
    text: LazyString


@dataclass(frozen=True, eq=False)
class Step:
    """One protective action with its official https links.

    Compared by identity, not by text: a step shared by several fields is one object, so a page
    shows it once. ``minutes`` is set on the steps a plan may lead with (see ADULT_PLAN), so that
    a person knows what each one asks of them.
    """

    text: LazyString
    links: tuple[Link, ...] = ()
    minutes: int | None = None

    @property
    def link(self) -> str | None:
        """The first link: what the partner API gives, one link a step."""
        return self.links[0].url if self.links else None

    @property
    def link_text(self) -> LazyString | None:
        return self.links[0].text if self.links else None


@dataclass(frozen=True)
class ExposedField:
    """One kind of exposed data: its CSV token, permanent bit and guidance."""

    name: str
    bit: int
    label: LazyString
    risk: LazyString
    steps: tuple[Step, ...]


def _link(url: str, text: LazyString) -> tuple[Link, ...]:
    return (Link(url, text),)


# TransUnion takes an adult's freeze and a parent's freeze for a child from the same page.
_TRANSUNION_FREEZE = Link("https://www.transunion.com/credit-freeze", _l("TransUnion credit freeze"))


# --- steps shared by several fields, and the ones a plan may lead with ---------------------
# Source: FTC, "What To Know About Credit Freezes and Fraud Alerts" (consumer.ftc.gov): a freeze is
# free, is placed with each bureau, and can be lifted to apply for credit.
_FREEZE = Step(
    _l(
        "Freeze your credit at each of the three credit bureaus. A freeze is free. It stops anyone "
        "opening new credit in your name. You can lift it when you apply for credit."
    ),
    (
        Link("https://www.equifax.com/personal/credit-report-services/credit-freeze/", _l("Equifax credit freeze")),
        Link("https://www.experian.com/freeze/center.html", _l("Experian credit freeze")),
        _TRANSUNION_FREEZE,
    ),
    minutes=30,
)
# Source: IRS, "Get an Identity Protection PIN" (irs.gov).
_IP_PIN = Step(
    _l(
        "Get an Identity Protection PIN from the IRS. Without it, no one can "
        "file a tax return using your Social Security number."
    ),
    _link(
        "https://www.irs.gov/identity-theft-fraud-scams/get-an-identity-protection-pin",
        _l("Get an IRS Identity Protection PIN"),
    ),
    minutes=15,
)
# Source: FTC, "What To Know About Credit Freezes and Fraud Alerts": one bureau tells the other two.
_FRAUD_ALERT = Step(
    _l(
        "Place a free fraud alert by contacting one credit bureau (Equifax, Experian or "
        "TransUnion). It tells lenders to check it is really you before they open credit "
        "in your name. The bureau you contact tells the other two."
    ),
    _link(
        "https://consumer.ftc.gov/articles/what-know-about-credit-freezes-and-fraud-alerts",
        _l("Credit freezes and fraud alerts (FTC)"),
    ),
    minutes=5,
)
_CREDIT_REPORTS = Step(
    _l(
        "Check your credit reports for accounts or credit checks you do not recognize. "
        "You can get them free every week."
    ),
    _link("https://www.annualcreditreport.com", _l("AnnualCreditReport.com")),
    minutes=15,
)
_PHONE_LOCK = Step(
    _l(
        "Ask your mobile carrier to add a PIN to your account and to turn on a "
        "port-out or SIM lock. This stops anyone moving your number to "
        "another phone."
    ),
    minutes=15,
)
_READ_EOB = Step(
    _l(
        "Read every Explanation of Benefits (EOB) statement from your health plan. Look "
        "for doctor visits, tests, equipment or prescriptions you did not get."
    ),
    minutes=10,
)
_EMAIL_MFA = Step(
    _l("Turn on multi-factor authentication for your email, so a password alone is not enough to get in."),
    minutes=10,
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
    _link("https://www.identitytheft.gov", _l("IdentityTheft.gov")),
)
_MY_SOCIAL_SECURITY = Step(
    _l(
        "Create a my Social Security account and check that the earnings on "
        "your statement are yours. Wrong earnings can mean someone is working "
        "under your number."
    ),
    _link("https://www.ssa.gov/myaccount/", _l("my Social Security")),
)

# --- a child's steps: for a person under 18 on the notice date, done by a parent or guardian -----
# Source: FTC, "How To Protect Your Child From Identity Theft" (consumer.ftc.gov/articles/
# how-protect-your-child-identity-theft) and "New protections available for minors under 16"
# (consumer.ftc.gov/consumer-alerts/2019/03): since 2018 a parent or guardian can freeze the credit
# of a child under 16 for free at each bureau; a bureau with no file for the child makes one to
# freeze it. A 16- or 17-year-old can ask for their own freeze.
# Sources for the proof documents and the ways to ask (online or by mail): Equifax, "Freezing your
# child's credit report: FAQ" (equifax.com); Experian, "Minor request" (experian.com/help/
# minor-request.html); TransUnion, "Credit freeze" (transunion.com/credit-freeze): a copy of the
# parent's ID and proof of address, and the child's birth certificate and Social Security card.
_CHILD_FREEZE = Step(
    _l(
        "Freeze your child's credit at each of the three credit bureaus. It is free. A parent or "
        "guardian asks for it online or by mail, with copies of your ID, a bill with your address, "
        "and your child's birth certificate and Social Security card. A teen of 16 or 17 can ask "
        "for it too."
    ),
    (
        Link(
            "https://www.equifax.com/personal/education/identity-theft/articles/-/learn/freezing-your-childs-credit-report-faq/",
            _l("Equifax: freeze a child's credit"),
        ),
        Link("https://www.experian.com/help/minor-request.html", _l("Experian: requests for a minor")),
        _TRANSUNION_FREEZE,
    ),
    minutes=45,
)
# Source: FTC, "How To Protect Your Child From Identity Theft": children usually have no credit
# report; one in a child's name can be a sign that someone is using the child's information.
# TransUnion takes the question through its child identity theft inquiry form (transunion.com).
_CHILD_REPORT = Step(
    _l(
        "Ask each credit bureau if your child has a credit report. A child should not have one. "
        "If there is one, someone may be using your child's information."
    ),
    _link("https://consumer.ftc.gov/articles/how-protect-your-child-identity-theft", _l("Protect your child (FTC)")),
    minutes=15,
)
# Source: FTC, "How To Protect Your Child From Identity Theft": check whether a child has a credit
# report around age 16, so there is time to fix errors before they apply for a job, a loan, a
# flat or college aid; a freeze stays until it is lifted, for the first application for credit.
_CHILD_AT_16 = Step(
    _l(
        "When your child turns 16, check again. Check once more before they turn 18 or apply for "
        "their first credit card, loan or job. Lift the freeze when they apply for credit."
    ),
    minutes=15,
)
# Source: IRS, "Get an Identity Protection PIN" (irs.gov): anyone with a Social Security number
# who can pass the IRS's identity checks can get one, dependents included.
_CHILD_IP_PIN = Step(
    _l(
        "If your child has a Social Security number, ask the IRS for an Identity Protection PIN for "
        "them. It stops anyone filing a tax return with their number."
    ),
    _IP_PIN.links,
    minutes=15,
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
                _link("https://informeddelivery.usps.com", _l("USPS Informed Delivery")),
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
            _PHONE_LOCK,
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
            _FREEZE,
            _IP_PIN,
            _CREDIT_REPORTS,
            _MY_SOCIAL_SECURITY,
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
                _link(
                    "https://consumer.ftc.gov/articles/how-recognize-and-avoid-phishing-scams",
                    _l("How to spot phishing (FTC)"),
                ),
            ),
            _EMAIL_MFA,
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
                _link(
                    "https://www.medicare.gov/basics/reporting-medicare-fraud-and-abuse", _l("Report Medicare fraud")
                ),
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
                _link("https://www.ic3.gov", _l("FBI Internet Crime Complaint Center")),
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


# --- the plan: the few steps that matter most for one person, each once --------------------------
PLAN_LENGTH = 5
# Most important first: the steps a plan may lead with. A person's plan holds those their fields
# call for, in this order, up to PLAN_LENGTH; the rest stay in each field's details.
ADULT_PLAN: tuple[Step, ...] = (_FREEZE, _IP_PIN, _FRAUD_ALERT, _CREDIT_REPORTS, _PHONE_LOCK, _READ_EOB, _EMAIL_MFA)
CHILD_PLAN: tuple[Step, ...] = (
    _CHILD_FREEZE,
    _CHILD_REPORT,
    _CHILD_IP_PIN,
    _CHILD_AT_16,
    _PHONE_LOCK,
    _READ_EOB,
    _EMAIL_MFA,
)
# A child's plan holds these whatever was exposed: what the FTC tells parents to do for any child.
_CHILD_ALWAYS = frozenset((_CHILD_FREEZE, _CHILD_REPORT, _CHILD_AT_16))
# An adult's step -> what a parent does for a child instead (None: nothing, e.g. a child cannot
# open a my Social Security account, and bureaus take a child's freeze rather than a fraud alert).
_FOR_CHILD: dict[Step, Step | None] = {
    _FREEZE: _CHILD_FREEZE,
    _FRAUD_ALERT: _CHILD_FREEZE,
    _CREDIT_REPORTS: _CHILD_REPORT,
    _IP_PIN: _CHILD_IP_PIN,
    _MY_SOCIAL_SECURITY: None,
}
ADULT_AGE = 18


@dataclass(frozen=True)
class Guidance:
    """What one person reads: what was exposed and what was not, their plan, then each field's
    other steps. No step appears twice: a step in the plan is left out of the details, and a step
    shared by two fields is shown under the first."""

    exposed: tuple[ExposedField, ...]
    not_exposed: tuple[ExposedField, ...]
    plan: tuple[Step, ...]
    details: tuple[tuple[ExposedField, tuple[Step, ...]], ...]
    minor: bool

    @property
    def ssn_exposed(self) -> bool:
        return any(field.name == "ssn" for field in self.exposed)


def guidance(mask: int, in_copy: Iterable[str] = (), minor: bool = False) -> Guidance:
    """The guidance for a person whose exposed fields are ``mask``.

    ``in_copy`` names the fields the stolen copy held (the programme's list): those not in ``mask``
    are listed as not exposed, and the Social Security number always is, since it is what decides
    whether to freeze. ``minor`` gives a parent's steps for a child instead of an adult's.
    """
    exposed = fields_in(mask)
    asked = {*in_copy, "ssn"}
    not_exposed = tuple(field for field in FIELDS if field.name in asked and not mask & field.bit)
    steps = {field.name: _own_steps(field, minor) for field in exposed}
    called_for = {step for own in steps.values() for step in own} | (_CHILD_ALWAYS if minor else set())
    plan = tuple(step for step in (CHILD_PLAN if minor else ADULT_PLAN) if step in called_for)[:PLAN_LENGTH]
    shown = set(plan)
    details = []
    for field in exposed:
        rest = tuple(step for step in steps[field.name] if step not in shown)
        shown.update(rest)
        details.append((field, rest))
    return Guidance(exposed, not_exposed, plan, tuple(details), minor)


def _own_steps(field: ExposedField, minor: bool) -> tuple[Step, ...]:
    """A field's steps, a child's version of each for a minor (in order, each once)."""
    if not minor:
        return field.steps
    mapped = (_FOR_CHILD.get(step, step) for step in field.steps)
    return tuple(dict.fromkeys(step for step in mapped if step is not None))


def is_minor(born: date, on: date) -> bool:
    """Under 18 on ``on`` (the notice date): a parent or guardian acts for them."""
    return (on.year - born.year - ((on.month, on.day) < (born.month, born.day))) < ADULT_AGE


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
