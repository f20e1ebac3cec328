"""Deterministic synthetic breach data for the demo, the tests and the benchmarks.

Nothing here describes a real person: names, addresses and numbers are drawn at random
from built-in lists, so the files can be shared, committed as fixtures and regenerated
at will. The data is deliberately *messy in the ways real breach files are* (accents,
apostrophes, hyphens, mixed SSN/ZIP/phone formats, blank SSNs) so that the import and
normalisation code is exercised on realistic input, not on tidy ASCII.

Standard library only, and no Flask: the CLI, pytest fixtures and benchmark scripts
all use it without an application.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import os
import random
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TextIO

PATIENT_HEADER: tuple[str, ...] = (
    "record_id",
    "first_name",
    "last_name",
    "date_of_birth",
    "ssn",
    "street",
    "city",
    "state",
    "zip",
    "phone",
    "exposed_fields",
)
CODE_HEADER: tuple[str, ...] = ("code", "enroll_by", "product")

DEFAULT_ENROLL_BY = datetime.date(2027, 6, 30)
PRODUCT = "Identity Protection 24 months"

# --- names -------------------------------------------------------------------------
# First names from many communities; a few carry accents, hyphens or apostrophes
# because real patient files do too.
FIRST_NAMES: tuple[str, ...] = (
    # common US names
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Christopher",
    "Karen",
    "Charles",
    "Lisa",
    "Daniel",
    "Nancy",
    "Matthew",
    "Betty",
    "Anthony",
    "Sandra",
    "Mark",
    "Margaret",
    "Donald",
    "Ashley",
    "Steven",
    "Kimberly",
    "Andrew",
    "Emily",
    "Paul",
    "Donna",
    "Joshua",
    "Michelle",
    "Kenneth",
    "Carol",
    "Kevin",
    "Amanda",
    "Brian",
    "Melissa",
    "George",
    "Deborah",
    "Timothy",
    "Stephanie",
    "Ronald",
    "Rebecca",
    "Jason",
    "Sharon",
    "Edward",
    "Laura",
    "Jeffrey",
    "Cynthia",
    "Ryan",
    "Dorothy",
    "Jacob",
    "Amy",
    "Gary",
    "Kathleen",
    "Nicholas",
    "Angela",
    "Eric",
    "Shirley",
    "Jonathan",
    "Emma",
    "Stephen",
    "Brenda",
    "Larry",
    "Pamela",
    "Justin",
    "Nicole",
    "Scott",
    "Anna",
    "Brandon",
    "Samantha",
    "Benjamin",
    "Katherine",
    "Samuel",
    "Christine",
    "Gregory",
    "Debra",
    "Alexander",
    "Rachel",
    "Patrick",
    "Carolyn",
    "Frank",
    "Janet",
    "Raymond",
    "Maria",
    "Jack",
    "Olivia",
    "Dennis",
    "Heather",
    "Jerry",
    "Helen",
    "Tyler",
    "Catherine",
    "Aaron",
    "Diane",
    "Henry",
    "Julie",
    "Douglas",
    "Victoria",
    "Peter",
    "Joyce",
    "Noah",
    "Lauren",
    "Ethan",
    "Kelly",
    "Liam",
    "Christina",
    "Mason",
    "Ruth",
    "Logan",
    "Joan",
    "Harper",
    "Evelyn",
    "Ava",
    "Mia",
    "Sophia",
    "Abigail",
    "Madison",
    "Grace",
    "Chloe",
    "Hannah",
    "Lily",
    "Aiden",
    "Caleb",
    "Owen",
    "Wyatt",
    "Hunter",
    "Austin",
    # Hispanic and Latino names
    "José",
    "María",
    "Juan",
    "Luis",
    "Carlos",
    "Jorge",
    "Miguel",
    "Alejandro",
    "Guadalupe",
    "Rosa",
    "Ana",
    "Sofía",
    "Valentina",
    "Camila",
    "Ximena",
    "Mateo",
    "Santiago",
    "Nicolás",
    "Inés",
    "Jesús",
    "Ramón",
    "Joaquín",
    "Lucía",
    "Marisol",
    "Alejandra",
    "Fernando",
    "Ricardo",
    "Yesenia",
    "Héctor",
    "Adrián",
    # African American names
    "DeShawn",
    "Jamal",
    "Tyrone",
    "Darnell",
    "Latoya",
    "Keisha",
    "Imani",
    "Aaliyah",
    "Jaylen",
    "Malik",
    "Ebony",
    "Tanisha",
    "D'Andre",
    "Ja'Marr",
    "De'Andre",
    "Shaniqua",
    "Terrell",
    "Jalisa",
    # East, South-East and South Asian names
    "Wei",
    "Mei",
    "Jian",
    "Xiaoming",
    "Li Na",
    "Hiroshi",
    "Yuki",
    "Haruto",
    "Sakura",
    "Ji-woo",
    "Min-jun",
    "Seo-yeon",
    "Hye-jin",
    "Minh",
    "Thảo",
    "Huong",
    "Linh",
    "Quang",
    "Anh",
    "Priya",
    "Rahul",
    "Aarav",
    "Ananya",
    "Sanjay",
    "Deepika",
    "Arjun",
    "Lakshmi",
    "Vikram",
    "Neha",
    "Rohan",
    # Middle Eastern and African names
    "Mohammed",
    "Fatima",
    "Ahmed",
    "Aisha",
    "Omar",
    "Layla",
    "Youssef",
    "Noor",
    "Hassan",
    "Zainab",
    "Chinedu",
    "Ngozi",
    "Kwame",
    "Amara",
    "Oluwaseun",
    "Abebe",
    # European names with marks or hyphens
    "Zoë",
    "Chloé",
    "André",
    "Renée",
    "François",
    "Jean-Luc",
    "Anne-Marie",
    "Mary-Kate",
    "Søren",
    "Björn",
    "Jürgen",
    "Małgorzata",
    "Łukasz",
    "Siobhán",
    "Seán",
    "Niamh",
    "Dagný",
    # Native American and Pacific Islander names
    "Kai",
    "Leilani",
    "Makana",
    "Keanu",
    "Kaimana",
    "Nizhoni",
    "Ahiga",
)

# Last names written in plain ASCII letters.
PLAIN_LAST_NAMES: tuple[str, ...] = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Miller",
    "Davis",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Hill",
    "Green",
    "Adams",
    "Baker",
    "Nelson",
    "Carter",
    "Mitchell",
    "Roberts",
    "Turner",
    "Phillips",
    "Campbell",
    "Parker",
    "Evans",
    "Edwards",
    "Collins",
    "Stewart",
    "Morris",
    "Rogers",
    "Reed",
    "Cook",
    "Morgan",
    "Bell",
    "Murphy",
    "Bailey",
    "Cooper",
    "Richardson",
    "Cox",
    "Howard",
    "Ward",
    "Peterson",
    "Gray",
    "James",
    "Watson",
    "Brooks",
    "Kelly",
    "Sanders",
    "Price",
    "Bennett",
    "Wood",
    "Barnes",
    "Ross",
    "Henderson",
    "Coleman",
    "Jenkins",
    "Perry",
    "Powell",
    "Long",
    "Patterson",
    "Hughes",
    "Washington",
    "Butler",
    "Simmons",
    "Foster",
    "Bryant",
    "Alexander",
    "Russell",
    "Griffin",
    "Hayes",
    "Myers",
    "Ford",
    "Hamilton",
    "Graham",
    "Sullivan",
    "Wallace",
    "Woods",
    "Cole",
    "West",
    "Jordan",
    "Owens",
    "Reynolds",
    "Fisher",
    "Ellis",
    "Harrison",
    "Gibson",
    "Marshall",
    "Wells",
    "Tucker",
    "Porter",
    "Hunter",
    "Hicks",
    "Crawford",
    "Henry",
    "Boyd",
    "Mason",
    "Kennedy",
    "Warren",
    "Dixon",
    "Burns",
    "Gordon",
    "Shaw",
    "Holmes",
    "Rice",
    "Robertson",
    "Black",
    "Daniels",
    "Palmer",
    "Mills",
    "Nichols",
    "Grant",
    "Knight",
    "Ferguson",
    "Stone",
    "Hawkins",
    "Dunn",
    "Perkins",
    "Hudson",
    "Spencer",
    "Pierce",
    "Hansen",
    "Larson",
    "Olson",
    "Nielsen",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Wagner",
    "Becker",
    "Hoffman",
    "Kowalski",
    "Nowak",
    "Kowalczyk",
    "Garcia",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Perez",
    "Sanchez",
    "Ramirez",
    "Torres",
    "Flores",
    "Rivera",
    "Gomez",
    "Diaz",
    "Reyes",
    "Morales",
    "Cruz",
    "Ortiz",
    "Chavez",
    "Ramos",
    "Ruiz",
    "Mendoza",
    "Castillo",
    "Moreno",
    "Romero",
    "Herrera",
    "Medina",
    "Aguilar",
    "Vargas",
    "Castro",
    "Silva",
    "Delgado",
    "Nguyen",
    "Tran",
    "Le",
    "Pham",
    "Huynh",
    "Vo",
    "Kim",
    "Park",
    "Choi",
    "Chen",
    "Wang",
    "Li",
    "Zhang",
    "Liu",
    "Yang",
    "Huang",
    "Wu",
    "Lin",
    "Zhou",
    "Xu",
    "Chang",
    "Wong",
    "Chan",
    "Patel",
    "Shah",
    "Singh",
    "Kumar",
    "Gupta",
    "Sharma",
    "Reddy",
    "Desai",
    "Tanaka",
    "Suzuki",
    "Yamamoto",
    "Sato",
    "Nakamura",
    "Santos",
    "Bautista",
    "Khan",
    "Ali",
    "Hassan",
    "Ahmed",
    "Haddad",
    "Nasser",
    "Okafor",
    "Adeyemi",
    "Mensah",
    "Mwangi",
    "Diallo",
    "Begay",
    "Yazzie",
    "Tsosie",
    "Kealoha",
    "Kahananui",
    "Cohen",
    "Levy",
    "Goldberg",
    "Friedman",
    "Katz",
)

# Last names that are hard for naive matching: accents, apostrophes, particles
# separated by spaces, internal capitals and fixed hyphenated forms.
TRICKY_LAST_NAMES: tuple[str, ...] = (
    # accents and other marks
    "García",
    "Rodríguez",
    "Martínez",
    "Hernández",
    "López",
    "González",
    "Pérez",
    "Sánchez",
    "Ramírez",
    "Gómez",
    "Díaz",
    "Gutiérrez",
    "Álvarez",
    "Jiménez",
    "Guzmán",
    "Peña",
    "Muñoz",
    "Núñez",
    "Ibáñez",
    "Castañeda",
    "Ordóñez",
    "Nguyễn",
    "Trần",
    "Lê",
    "Phạm",
    "Huỳnh",
    "Võ",
    "Đặng",
    "Bùi",
    "Đỗ",
    "Hoàng",
    "Müller",
    "Schäfer",
    "Köhler",
    "Böhm",
    "Jäger",
    "Krüger",
    "Groß",
    "Wiśniewski",
    "Wójcik",
    "Dvořák",
    "Novák",
    "Jovanović",
    "Petrović",
    "Lévesque",
    "Bélanger",
    "Côté",
    "Gagné",
    "Hébert",
    "Gonçalves",
    "Conceição",
    "Sørensen",
    "Håkansson",
    "Öztürk",
    "Yılmaz",
    "Çelik",  # the dotless ı is the real Turkish spelling
    # apostrophes
    "O'Brien",
    "O'Connor",
    "O'Neill",
    "O'Sullivan",
    "O'Reilly",
    "O'Malley",
    "O'Donnell",
    "O'Hara",
    "D'Angelo",
    "D'Amico",
    "D'Souza",
    "N'Diaye",
    "L'Heureux",
    "Dell'Aquila",
    # inner spaces
    "De La Cruz",
    "De La Rosa",
    "De Los Santos",
    "Del Rio",
    "Van der Berg",
    "Van Buren",
    "Van Dyke",
    "Da Silva",
    "Dos Santos",
    "St. John",
    "St. Clair",
    "La Fontaine",
    "Le Blanc",
    "El Amin",
    "Ben David",
    "de la Garza",
    "van der Merwe",
    "Abu Bakr",
    # internal capitals
    "McDonald",
    "MacArthur",
    "McCarthy",
    "McKenzie",
    "MacLeod",
    "McAllister",
    "McBride",
    "McGregor",
    "MacDonald",
    "DeSantis",
    "DiMaggio",
    "LaRue",
    "LeBlanc",
    "DuBois",
    "FitzGerald",
    "VanHorn",
    "DeLuca",
    "LaFleur",
    # fixed hyphenated names
    "Smith-Jones",
    "García-López",
    "Al-Farsi",
    "Al-Sayed",
    "Ortiz-Rivera",
    "Chen-Williams",
    "Nguyen-Tran",
    "Lloyd-Jones",
)

# --- addresses ---------------------------------------------------------------------
# (city, state, ZIP prefix): every state and DC appears at least once, so state
# validation sees the whole USPS list. The three-digit ZIP prefixes are close to the
# real ones but not guaranteed; nothing downstream relies on them matching.
PLACES: tuple[tuple[str, str, str], ...] = (
    ("Birmingham", "AL", "352"),
    ("Mobile", "AL", "366"),
    ("Anchorage", "AK", "995"),
    ("Juneau", "AK", "998"),
    ("Phoenix", "AZ", "850"),
    ("Tucson", "AZ", "857"),
    ("Flagstaff", "AZ", "860"),
    ("Little Rock", "AR", "722"),
    ("Fayetteville", "AR", "727"),
    ("Los Angeles", "CA", "900"),
    ("San Diego", "CA", "921"),
    ("San Jose", "CA", "951"),
    ("San Francisco", "CA", "941"),
    ("Fresno", "CA", "937"),
    ("Sacramento", "CA", "958"),
    ("Oakland", "CA", "946"),
    ("Santa Ana", "CA", "927"),
    ("Bakersfield", "CA", "933"),
    ("Denver", "CO", "802"),
    ("Colorado Springs", "CO", "809"),
    ("Cañon City", "CO", "812"),
    ("Hartford", "CT", "061"),
    ("Stamford", "CT", "069"),
    ("Wilmington", "DE", "198"),
    ("Dover", "DE", "199"),
    ("Washington", "DC", "200"),
    ("Miami", "FL", "331"),
    ("Hialeah", "FL", "330"),
    ("Tampa", "FL", "336"),
    ("Orlando", "FL", "328"),
    ("Jacksonville", "FL", "322"),
    ("Atlanta", "GA", "303"),
    ("Savannah", "GA", "314"),
    ("Honolulu", "HI", "968"),
    ("Hilo", "HI", "967"),
    ("Boise", "ID", "837"),
    ("Idaho Falls", "ID", "834"),
    ("Chicago", "IL", "606"),
    ("Springfield", "IL", "627"),
    ("Indianapolis", "IN", "462"),
    ("Fort Wayne", "IN", "468"),
    ("Des Moines", "IA", "503"),
    ("Cedar Rapids", "IA", "524"),
    ("Wichita", "KS", "672"),
    ("Topeka", "KS", "666"),
    ("Louisville", "KY", "402"),
    ("Lexington", "KY", "405"),
    ("New Orleans", "LA", "701"),
    ("Baton Rouge", "LA", "708"),
    ("Portland", "ME", "041"),
    ("Augusta", "ME", "043"),
    ("Baltimore", "MD", "212"),
    ("Annapolis", "MD", "214"),
    ("Boston", "MA", "021"),
    ("Worcester", "MA", "016"),
    ("Detroit", "MI", "482"),
    ("Grand Rapids", "MI", "495"),
    ("Lansing", "MI", "489"),
    ("Minneapolis", "MN", "554"),
    ("St. Paul", "MN", "551"),
    ("Duluth", "MN", "558"),
    ("Jackson", "MS", "392"),
    ("Gulfport", "MS", "395"),
    ("Kansas City", "MO", "641"),
    ("St. Louis", "MO", "631"),
    ("Billings", "MT", "591"),
    ("Missoula", "MT", "598"),
    ("Omaha", "NE", "681"),
    ("Lincoln", "NE", "685"),
    ("Las Vegas", "NV", "891"),
    ("Reno", "NV", "895"),
    ("Manchester", "NH", "031"),
    ("Concord", "NH", "033"),
    ("Newark", "NJ", "071"),
    ("Jersey City", "NJ", "073"),
    ("Trenton", "NJ", "086"),
    ("Albuquerque", "NM", "871"),
    ("Santa Fe", "NM", "875"),
    ("Española", "NM", "875"),
    ("New York", "NY", "100"),
    ("Bronx", "NY", "104"),
    ("Brooklyn", "NY", "112"),
    ("Buffalo", "NY", "142"),
    ("Rochester", "NY", "146"),
    ("Charlotte", "NC", "282"),
    ("Raleigh", "NC", "276"),
    ("Fargo", "ND", "581"),
    ("Bismarck", "ND", "585"),
    ("Columbus", "OH", "432"),
    ("Cleveland", "OH", "441"),
    ("Cincinnati", "OH", "452"),
    ("Oklahoma City", "OK", "731"),
    ("Tulsa", "OK", "741"),
    ("Portland", "OR", "972"),
    ("Eugene", "OR", "974"),
    ("Philadelphia", "PA", "191"),
    ("Pittsburgh", "PA", "152"),
    ("Providence", "RI", "029"),
    ("Cranston", "RI", "029"),
    ("Columbia", "SC", "292"),
    ("Charleston", "SC", "294"),
    ("Greenville", "SC", "296"),
    ("Sioux Falls", "SD", "571"),
    ("Rapid City", "SD", "577"),
    ("Nashville", "TN", "372"),
    ("Memphis", "TN", "381"),
    ("Knoxville", "TN", "379"),
    ("Houston", "TX", "770"),
    ("San Antonio", "TX", "782"),
    ("Dallas", "TX", "752"),
    ("Austin", "TX", "787"),
    ("El Paso", "TX", "799"),
    ("Laredo", "TX", "780"),
    ("Salt Lake City", "UT", "841"),
    ("Provo", "UT", "846"),
    ("Burlington", "VT", "054"),
    ("Montpelier", "VT", "056"),
    ("Richmond", "VA", "232"),
    ("Norfolk", "VA", "235"),
    ("Seattle", "WA", "981"),
    ("Spokane", "WA", "992"),
    ("Tacoma", "WA", "984"),
    ("Charleston", "WV", "253"),
    ("Morgantown", "WV", "265"),
    ("Milwaukee", "WI", "532"),
    ("Madison", "WI", "537"),
    ("Cheyenne", "WY", "820"),
    ("Casper", "WY", "826"),
)

STREET_NAMES: tuple[str, ...] = (
    "Maple",
    "Oak",
    "Pine",
    "Cedar",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Main",
    "Park",
    "Sunset",
    "Highland",
    "Jefferson",
    "Lincoln",
    "Madison",
    "Franklin",
    "Church",
    "Mill",
    "River",
    "Spring",
    "Willow",
    "Meadow",
    "Forest",
    "Ridge",
    "Cherry",
    "Walnut",
    "Chestnut",
    "Birch",
    "Magnolia",
    "Dogwood",
    "Peachtree",
    "Martin Luther King Jr",
    "César Chávez",
    "Camino Real",
    "Prairie",
    "Sycamore",
    "Hickory",
    "Adams",
    "Monroe",
    "Jackson",
    "Bay",
    "Harbor",
    "Valley",
    "Canyon",
    "Mesa",
    "Aloha",
    "Bayou",
    "1st",
    "2nd",
    "3rd",
    "4th",
    "5th",
    "12th",
    "42nd",
)
STREET_SUFFIXES: tuple[str, ...] = (
    "St",
    "Ave",
    "Rd",
    "Blvd",
    "Ln",
    "Dr",
    "Ct",
    "Way",
    "Pl",
    "Ter",
    "Cir",
    "Pkwy",
)

# --- exposed fields ----------------------------------------------------------------
# (token, probability). Kept in the canonical order of portal.exposure.FIELDS so the
# generated value lists the fields in FIELDS order. "name" is always
# exposed and "ssn" only when the row has one; both are handled in code.
OPTIONAL_EXPOSURES: tuple[tuple[str, float], ...] = (
    ("date_of_birth", 0.85),
    ("address", 0.80),
    ("phone", 0.50),
    ("ssn", 0.60),
    ("email", 0.35),
    ("medical_record_number", 0.30),
    ("health_insurance", 0.35),
    ("clinical_data", 0.12),
)

# First halves of double-barrelled names: any last name that is not already hyphenated.
_BARREL_FIRST: tuple[str, ...] = tuple(name for name in PLAIN_LAST_NAMES + TRICKY_LAST_NAMES if "-" not in name)

_DOB_FIRST = datetime.date(1930, 1, 1).toordinal()
_DOB_LAST = datetime.date(2008, 12, 31).toordinal()
# Children, when asked for: under 18 on any notice date up to the end of 2026.
_CHILD_FIRST = datetime.date(2009, 1, 1).toordinal()
_CHILD_LAST = datetime.date(2024, 12, 31).toordinal()

# Crockford's base 32: no I, L, O or U, so codes read aloud or retyped stay unambiguous.
CROCKFORD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CODE_BITS = 60  # 12 symbols of 5 bits: "IDP-XXXX-XXXX-XXXX"
_HALF_BITS = _CODE_BITS // 2
_HALF_MASK = (1 << _HALF_BITS) - 1
_FEISTEL_ROUNDS = 4


# --- patients ----------------------------------------------------------------------
def synthetic_patients(
    count: int, seed: int = 0, start: int = 1, in_copy: Collection[str] | None = None, children: float = 0.0
) -> Iterator[dict[str, str]]:
    """Yield `count` patient rows keyed by PATIENT_HEADER, record numbers from `start`.

    `in_copy` names the fields the stolen copy held (a programme's ``exposed_fields``): no row
    lists another (unset: any field of the vocabulary). `children` is the share of people born
    in _CHILD_FIRST.._CHILD_LAST. Neither changes the other values drawn, so rows stay comparable.

    Each row is a function of (seed, record number) alone: generating 1..2000 in one
    call or as 1..1000 and 1001..2000 gives the same rows, so benchmarks can build
    large files in chunks or in parallel. Rows are produced one at a time, so memory
    stays flat however large `count` is.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    rng = random.Random()
    for n in range(start, start + count):
        # Reseeding per record costs a few microseconds but buys chunk independence.
        rng.seed(f"patient/{seed}/{n}")
        row = _patient(rng, n, in_copy)
        if children and rng.random() < children:
            row["date_of_birth"] = datetime.date.fromordinal(rng.randint(_CHILD_FIRST, _CHILD_LAST)).isoformat()
        yield row


def _patient(rng: random.Random, n: int, in_copy: Collection[str] | None) -> dict[str, str]:
    """Build one CSV row from an already-seeded generator."""
    city, state, zip_prefix = rng.choice(PLACES)
    ssn = _ssn(rng)
    return {
        "record_id": f"SYN-{n:08d}",
        "first_name": rng.choice(FIRST_NAMES),
        "last_name": _last_name(rng),
        "date_of_birth": datetime.date.fromordinal(rng.randint(_DOB_FIRST, _DOB_LAST)).isoformat(),
        "ssn": ssn,
        "street": _street(rng),
        "city": city,
        "state": state,
        "zip": _zip(rng, zip_prefix),
        "phone": _phone(rng),
        "exposed_fields": _exposed_fields(rng, bool(ssn), in_copy),
    }


def _last_name(rng: random.Random) -> str:
    """About a third of last names are tricky: from TRICKY_LAST_NAMES or double-barrelled."""
    roll = rng.random()
    if roll < 0.06:
        # Double-barrelled names such as "Ramírez-O'Connor" widen the identity space.
        first = rng.choice(_BARREL_FIRST)
        second = rng.choice(PLAIN_LAST_NAMES)
        return f"{first}-{second}" if first != second else first
    if roll < 0.34:
        return rng.choice(TRICKY_LAST_NAMES)
    return rng.choice(PLAIN_LAST_NAMES)


def _ssn(rng: random.Random) -> str:
    """A valid-looking SSN (never area 000, 666 or 900+); 5 % blank, half with dashes."""
    if rng.random() < 0.05:
        return ""
    area = rng.randint(1, 898)
    if area >= 666:
        area += 1  # skip 666, so the range is 001-665 and 667-899
    group = rng.randint(1, 99)
    serial = rng.randint(1, 9999)
    if rng.random() < 0.5:
        return f"{area:03d}-{group:02d}-{serial:04d}"
    return f"{area:03d}{group:02d}{serial:04d}"


def _street(rng: random.Random) -> str:
    """A street line such as "1234 Maple Ave Apt 5"; about a quarter have a unit."""
    line = f"{rng.randint(1, 9999)} {rng.choice(STREET_NAMES)} {rng.choice(STREET_SUFFIXES)}"
    roll = rng.random()
    if roll < 0.18:
        return f"{line} Apt {rng.randint(1, 40)}"
    if roll < 0.23:
        return f"{line} Unit {rng.randint(1, 30)}{rng.choice('ABCD')}"
    if roll < 0.26:
        return f"{line} # {rng.randint(100, 999)}"
    return line


def _zip(rng: random.Random, prefix: str) -> str:
    """A five-digit ZIP; 20 % ZIP+4, mostly "12345-6789" and sometimes run together."""
    zip5 = f"{prefix}{rng.randint(1, 99):02d}"
    if rng.random() >= 0.20:
        return zip5
    plus4 = f"{rng.randint(1, 9999):04d}"
    return f"{zip5}-{plus4}" if rng.random() < 0.8 else f"{zip5}{plus4}"


def _phone(rng: random.Random) -> str:
    """A NANP-shaped number (area and exchange start 2-9, no N11) in one of four formats."""
    area = _nanp_three(rng)
    exchange = _nanp_three(rng)
    line = f"{rng.randint(0, 9999):04d}"
    style = rng.randrange(4)
    if style == 0:
        return f"({area}) {exchange}-{line}"
    if style == 1:
        return f"{area}-{exchange}-{line}"
    if style == 2:
        return f"{area}{exchange}{line}"
    return f"+1 {area} {exchange} {line}"


def _nanp_three(rng: random.Random) -> str:
    """Three digits valid as a NANP area code or exchange: 2-9 first, not N11."""
    while True:
        value = rng.randint(200, 999)
        if value % 100 != 11:
            return str(value)


def _exposed_fields(rng: random.Random, has_ssn: bool, in_copy: Collection[str] | None) -> str:
    """A ';'-joined, canonically ordered subset of `in_copy` (of the vocabulary) that always has "name".

    Every token's draw is made, listed or not, so that the rest of the row does not depend on `in_copy`.
    """
    tokens = ["name"]
    for token, probability in OPTIONAL_EXPOSURES:
        drawn = rng.random() < probability
        if drawn and (token != "ssn" or has_ssn) and (in_copy is None or token in in_copy):
            tokens.append(token)
    return ";".join(tokens)


# --- activation codes --------------------------------------------------------------
def synthetic_codes(count: int, seed: int = 0, enroll_by: datetime.date | None = None) -> Iterator[dict[str, str]]:
    """Yield `count` code rows keyed by CODE_HEADER, e.g. code "IDP-7K3M-Q9TX-2B4H".

    The 60 code bits are the row number passed through a 4-round Feistel permutation
    whose round keys come from random.Random(seed). A permutation cannot repeat a value,
    so codes within one seed are unique by construction without keeping a "seen" set
    (memory stays flat for millions of codes). Different seeds give unrelated
    permutations, so their codes overlap only with negligible probability.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    if count > 1 << _CODE_BITS:
        raise ValueError("count exceeds the code space")
    rng = random.Random(f"codes/{seed}")
    round_keys = [rng.getrandbits(128).to_bytes(16, "big") for _ in range(_FEISTEL_ROUNDS)]
    enroll = (enroll_by or DEFAULT_ENROLL_BY).isoformat()
    for index in range(count):
        yield {
            "code": _format_code(_permute(index, round_keys)),
            "enroll_by": enroll,
            "product": PRODUCT,
        }


def _permute(value: int, round_keys: Sequence[bytes]) -> int:
    """Map a 60-bit integer to another, one-to-one, under the given round keys."""
    left, right = value >> _HALF_BITS, value & _HALF_MASK
    for key in round_keys:
        digest = hashlib.blake2b(right.to_bytes(4, "big"), key=key, digest_size=4).digest()
        left, right = right, left ^ (int.from_bytes(digest, "big") & _HALF_MASK)
    return (left << _HALF_BITS) | right


def _format_code(value: int) -> str:
    """Write a 60-bit integer as "IDP-" and three groups of four Crockford symbols."""
    symbols = []
    for _ in range(_CODE_BITS // 5):
        symbols.append(CROCKFORD_ALPHABET[value & 31])
        value >>= 5
    text = "".join(reversed(symbols))
    return f"IDP-{text[0:4]}-{text[4:8]}-{text[8:12]}"


# --- CSV ---------------------------------------------------------------------------
def write_csv(
    path_or_file: str | os.PathLike[str] | TextIO,
    header: Sequence[str],
    rows: Iterable[dict[str, str]],
) -> int:
    """Stream `rows` as CSV with a header line; return how many rows were written.

    A path is opened as UTF-8 with newline="" (what the csv module requires); an open
    text file such as sys.stdout is written to and left open for the caller. Lines end
    in "\\n" so files are byte-identical across platforms and diff cleanly.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "w", encoding="utf-8", newline="") as handle:
            return _write_rows(handle, header, rows)
    return _write_rows(path_or_file, header, rows)


def _write_rows(handle: TextIO, header: Sequence[str], rows: Iterable[dict[str, str]]) -> int:
    """Write the header and rows to an open file; unknown keys raise ValueError."""
    writer = csv.DictWriter(handle, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    written = 0
    for row in rows:
        writer.writerow(row)
        written += 1
    return written
