"""The second look at a semantic candidate: do the two questions ask the
same thing, or only look alike?

Sentence embeddings put "Is it legal to record a call?" and "...illegal..."
at 0.987, "Celsius to Fahrenheit" and its reverse at 0.995: cosine
similarity measures topic, not meaning. The vector search finds a candidate;
a verifier decides whether it may answer. `LexicalVerifier` compares the
two texts' structure, cheaply (tens of microseconds, no model):

- negation: one asks with a negation (not, never, without, no ...) and the
  other without, or a word against its negative form (legal / illegal);
- numbers, dates and units: the multisets must be equal ("2 kg" is not
  "2 lb", "in May" is not "in June", "five" is "5");
- antonyms: a word in one against its opposite in the other (best / worst,
  faster / slower, import / export), from a curated table, opposed affixes,
  and WordNet 3.0's antonyms of any content word (services/cache/
  wordnet.py: temporary / permanent, generous / stingy), read through its
  inflection rules;
- entities: a name (capitalized past the first word, all caps, or with
  digits) in one and not the other;
- direction and order: two shared words in opposite order with an
  asymmetric word between them in both ("Java faster than Python",
  "from Paris to London", "does smoking cause cancer"), or a person who
  is the subject in one and the object in the other ("can I sue my
  landlord" / "can my landlord sue me");
- unrelated: not one content word in common;
- slot changes: the texts share their content but one swaps one or two
  content words for others ("dose for adults" / "dose for children",
  lowercase "france" / "germany") and the swap is not a known synonym
  (the curated groups, or two words sharing a WordNet synset: modify /
  change, frequently / often).

Everything it cannot prove different it accepts: the similarity threshold,
calibrated with the verifier on (services/cache/calibration.py), decides
the rest. The rules err on the safe side: a rejected paraphrase costs one
generation; an accepted near-miss serves a wrong answer.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import Counter
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from services.cache.wordnet import WordNet, wordnet


class Check(Enum):
    """Why a verifier rejected a candidate (the trace's and header's word)."""

    SAME = "same"
    NEGATION = "negation"
    NUMBER = "number"
    DATE = "date"
    UNIT = "unit"
    ANTONYM = "antonym"
    ENTITY = "entity"
    ORDER = "order"
    SLOT = "slot"
    UNRELATED = "unrelated"
    # Reworded: content words replaced on both sides; accepted only from
    # the similarity calibrated for rewordings.
    REWORDED = "reworded"
    NO_TEXT = "no-text"


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    check: Check
    # What differed, for the trace: e.g. "adults/children".
    detail: str = ""
    # An acceptance may hold only from a similarity up: a rewording (content
    # words replaced on both sides) is where a near miss the checks cannot
    # name hides, so it must be closer than the threshold asks of others.
    min_similarity: float = 0.0

    @property
    def label(self) -> str:
        """ "accept", or "reject:<check>"."""
        return "accept" if self.accepted else f"reject:{self.check.value}"

    def at(self, similarity: float, *, min_similarity: float | None = None) -> Verdict:
        """This verdict for a candidate at `similarity`: an acceptance that
        asks for more similarity than the candidate has is a rejection.
        `min_similarity` replaces the one asked (calibration tries several)."""
        floor = self.min_similarity if min_similarity is None or self.check is not Check.REWORDED else min_similarity
        if self.accepted and similarity < floor:
            return Verdict(False, self.check, self.detail)
        return self


ACCEPT = Verdict(True, Check.SAME)


class HitVerifier(Protocol):
    """Decides whether a stored question may answer a new one."""

    @property
    def name(self) -> str: ...

    def verify(self, query: str, stored: str) -> Verdict: ...


class AcceptAll:
    """No second look: the similarity threshold alone decides."""

    name = "none"

    def verify(self, query: str, stored: str) -> Verdict:
        return ACCEPT


# --- lexicons ---------------------------------------------------------------

_CONTRACTIONS = [
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bcannot\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'d\b"), " would"),
    (re.compile(r"\b(it|that|what|who|where|when|how|there|here|he|she)'s\b"), r"\1 is"),
    (re.compile(r"'s\b"), ""),
]
_TOKEN = re.compile(r"[a-z0-9_]+(?:[.,][0-9]+)*|[%$€£¥°#+]")

NEGATIONS = frozenset(
    # Negative particles, pronouns and adverbs; verbs that carry a negation
    # ("fail to", "unable to", "refuse to"); and verbs and prepositions of
    # avoiding, preventing and leaving out ("how do I avoid X" asks the
    # opposite of "how do I X"). One side with one and the other without
    # is a negation flip; both with one cancel out.
    """not no non never without none nobody nothing neither nor nowhere noone hardly barely scarcely rarely
    seldom lack lacks lacked lacking fail fails failed failing unable refuse refuses refused
    avoid avoids avoided avoiding prevent prevents prevented preventing refrain refrains refrained
    cease ceases ceased ceasing stop stops stopped stopping except excluding absent absence""".split()
)
_NEGATIVE_PREFIXES = ("un", "in", "il", "im", "ir", "dis", "non", "ab", "a", "mis", "anti")
# Prefixes that turn a word into its opposite (increase / decrease, upload
# / download, implicit / explicit): read both ways, with a stem of at least
# `_MIN_AFFIX_STEM` letters left, so that short words do not match by chance.
_OPPOSED_PREFIXES = (
    ("over", "under"), ("up", "down"), ("in", "out"), ("in", "de"), ("en", "de"), ("en", "dis"), ("im", "ex"),
    ("in", "ex"), ("pre", "post"), ("hyper", "hypo"), ("max", "min"), ("super", "sub"), ("inter", "intra"),
    ("on", "off"), ("ac", "de"), ("as", "de"), ("pro", "anti"), ("pro", "con"), ("inc", "dec"), ("", "de"),
)  # fmt: skip
# Suffixes likewise (careful / careless, employer / employee).
_OPPOSED_SUFFIXES = (("ful", "less"), ("", "less"), ("er", "ee"), ("or", "ee"))
_MIN_AFFIX_STEM = 4

STOPWORDS = frozenset(
    """a an the of in on at for to from by with about as into onto over under than then and or but if so
    is are was were be been being am do does did doing done have has had having will would shall should can
    could may might must i me my mine we us our you your yours he him his she her it its they them their
    this that these those there here what which who whom whose when where why how whether
    any some each every all both either much many more most very really just also too quite
    way ways please tell explain know want need like get got go going thing things someone something
    anyone anything one's possible able kind sort type between one""".split()
)

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update(
    {
        "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
        "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
        "first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5", "sixth": "6", "seventh": "7",
        "eighth": "8", "ninth": "9", "tenth": "10", "half": "0.5", "twice": "2", "double": "2", "triple": "3",
        "dozen": "12", "thrice": "3", "quarter": "0.25",
    }
)  # fmt: skip
# "One" is as often "a" or a pronoun ("how do I write one?"): digits only.
del _NUMBER_WORDS["one"]
_ORDINAL = re.compile(r"^([0-9]+)(st|nd|rd|th|s)$")

_MONTHS = {
    m[:3]: m for m in "january february march april may june july august september october november december".split()
}
_DATE_WORDS = frozenset(
    list(_MONTHS.values())
    + "monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday tonight weekend weekday "
    "morning afternoon evening night noon midnight spring summer autumn fall winter christmas easter "
    "bc ad century decade".split()
)
# May, March and Fall are common words too: a month only next to a number,
# or after in/of/on/by/until/since.
_AMBIGUOUS_DATES = frozenset({"may", "march", "fall"})

_UNITS = {
    # temperature
    "celsius": "celsius", "centigrade": "celsius", "°c": "celsius", "fahrenheit": "fahrenheit",
    "°f": "fahrenheit", "kelvin": "kelvin",
    # mass
    "kg": "kg", "kgs": "kg", "kilo": "kg", "kilos": "kg", "kilogram": "kg", "kilograms": "kg",
    "g": "g", "gram": "g", "grams": "g", "mg": "mg", "milligram": "mg", "milligrams": "mg",
    "lb": "lb", "lbs": "lb", "pound": "lb", "pounds": "lb", "oz": "oz", "ounce": "oz", "ounces": "oz",
    "ton": "ton", "tons": "ton", "tonne": "ton", "tonnes": "ton", "stone": "stone",
    # length
    "km": "km", "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km",
    "m": "m", "meter": "m", "meters": "m", "metre": "m", "metres": "m",
    "cm": "cm", "centimeter": "cm", "centimeters": "cm", "centimetre": "cm", "centimetres": "cm",
    "mm": "mm", "millimeter": "mm", "millimeters": "mm", "mile": "mile", "miles": "mile",
    "inch": "inch", "inches": "inch", "foot": "foot", "feet": "foot", "ft": "foot", "yard": "yard",
    "yards": "yard",
    # volume
    "l": "l", "liter": "l", "liters": "l", "litre": "l", "litres": "l", "ml": "ml", "milliliter": "ml",
    "milliliters": "ml", "gallon": "gallon", "gallons": "gallon", "cup": "cup", "cups": "cup",
    "tablespoon": "tbsp", "tablespoons": "tbsp", "tbsp": "tbsp", "teaspoon": "tsp", "teaspoons": "tsp",
    "tsp": "tsp", "pint": "pint", "pints": "pint",
    # speed, data, energy, power
    "mph": "mph", "kmh": "kmh", "kph": "kmh", "knot": "knot", "knots": "knot",
    "bit": "bit", "bits": "bit", "byte": "byte", "bytes": "byte", "kb": "kb", "mb": "mb", "gb": "gb",
    "tb": "tb", "kilobyte": "kb", "kilobytes": "kb", "megabyte": "mb", "megabytes": "mb", "gigabyte": "gb",
    "gigabytes": "gb", "terabyte": "tb", "terabytes": "tb", "calorie": "kcal", "calories": "kcal",
    "kcal": "kcal", "joule": "joule", "joules": "joule", "watt": "watt", "watts": "watt", "kw": "kw",
    "kwh": "kwh", "volt": "volt", "volts": "volt", "amp": "amp", "amps": "amp", "hz": "hz", "ghz": "ghz",
    "mhz": "mhz",
    # time
    "seconds": "second", "sec": "second", "secs": "second", "minute": "minute",
    "minutes": "minute", "min": "minute", "mins": "minute", "hour": "hour", "hours": "hour", "hr": "hour",
    "hrs": "hour", "day": "day", "days": "day", "week": "week", "weeks": "week", "month": "month",
    "months": "month", "year": "year", "years": "year", "ms": "ms", "millisecond": "ms", "milliseconds": "ms",
    # money and ratios
    "$": "usd", "dollar": "usd", "dollars": "usd", "usd": "usd", "€": "eur", "euro": "eur", "euros": "eur",
    "eur": "eur", "£": "gbp", "gbp": "gbp", "sterling": "gbp", "¥": "jpy", "yen": "jpy", "jpy": "jpy",
    "rupee": "inr", "rupees": "inr", "inr": "inr", "yuan": "cny", "bitcoin": "btc", "btc": "btc",
    "%": "percent", "percent": "percent", "percentage": "percent", "degree": "degree", "degrees": "degree",
}  # fmt: skip

# Opposites, as "a/b" (read both ways).
_ANTONYM_PAIRS = """
best/worst better/worse good/bad faster/slower fast/slow quick/slow quicker/slower higher/lower high/low
highest/lowest increase/decrease increases/decreases increasing/decreasing raise/lower rise/fall more/less
most/least maximum/minimum max/min largest/smallest biggest/smallest large/small big/small larger/smaller
bigger/smaller long/short longer/shorter longest/shortest hot/cold hotter/colder warm/cool heavy/light
heavier/lighter strong/weak stronger/weaker cheap/expensive cheaper/pricier cheapest/priciest rich/poor
old/new older/newer oldest/newest young/old younger/older early/late earlier/later earliest/latest
before/after above/below over/under up/down upper/lower top/bottom inside/outside enter/exit
start/stop begin/end first/last open/close opened/closed opening/closing on/off enable/disable
enabled/disabled add/remove adding/removing insert/delete install/uninstall buy/sell buying/selling
import/export imports/exports upload/download uploading/downloading input/output encrypt/decrypt
encryption/decryption encode/decode compress/decompress zip/unzip push/pull win/lose winning/losing
won/lost pass/fail accept/reject allow/forbid allowed/forbidden allow/deny true/false right/wrong
correct/incorrect safe/dangerous healthy/unhealthy positive/negative plus/minus gain/lose gaining/losing
profit/loss north/south east/west left/right horizontal/vertical ascending/descending asc/desc
forward/backward push/pop enqueue/dequeue lock/unlock mount/unmount connect/disconnect follow/unfollow
subscribe/unsubscribe like/dislike love/hate agree/disagree include/exclude including/excluding
inclusive/exclusive public/private internal/external client/server sender/receiver send/receive
sending/receiving male/female men/women man/woman boy/girl husband/wife father/mother son/daughter
brother/sister king/queen adult/child adults/children kid/adult kids/adults parent/child parents/children
wet/dry full/empty hard/soft easy/difficult easier/harder easiest/hardest simple/complex light/dark
white/black day/night sunrise/sunset lowercase/uppercase odd/even sync/async synchronous/asynchronous
static/dynamic mutable/immutable global/local frontend/backend borrow/lend lender/borrower
buyer/seller employer/employee teacher/student landlord/tenant predator/prey import/export
wide/narrow wider/narrower widest/narrowest broad/narrow thick/thin thicker/thinner deep/shallow
deeper/shallower tall/short taller/shorter tallest/shortest near/far nearer/farther nearest/farthest
closest/farthest close/far loud/quiet louder/quieter loud/soft noisy/quiet bright/dim bright/dark
brighter/darker brighten/darken lighten/darken sharp/dull sharp/blunt tight/loose tighten/loosen
rough/smooth sweet/bitter sweet/sour sweet/savory fat/thin fat/lean alive/dead live/die life/death
birth/death born/died awake/asleep wake/sleep present/absent same/different similar/different
common/rare many/few fewer/more fewest/most always/never often/rarely everything/nothing
everyone/nobody everywhere/nowhere all/none majority/minority major/minor plural/singular
success/failure succeed/fail winner/loser victory/defeat attack/defend attack/defense offense/defense
offensive/defensive war/peace friend/enemy ally/enemy arrive/depart arrive/leave arrival/departure
come/go coming/going give/take giving/taking incoming/outgoing inbound/outbound inhale/exhale
entrance/exit ascend/descend climb/descend rising/falling rise/set sunrise/sunset dawn/dusk
sink/float freeze/melt freezing/melting freezing/boiling freeze/boil heat/cool heating/cooling
heater/cooler warm/cold warmer/colder warmest/coldest expand/contract expand/shrink grow/shrink
inflate/deflate raw/cooked fresh/stale fresh/rotten ripe/unripe solid/liquid liquid/gas humid/dry
happy/sad happiness/sadness joy/sorrow laugh/cry optimist/pessimist optimistic/pessimistic
introvert/extrovert introverted/extroverted innocent/guilty plaintiff/defendant prosecution/defense
hire/fire hiring/firing promote/demote promotion/demotion reward/punishment praise/criticism
praise/blame pro/con pros/cons advantage/drawback advantages/drawbacks benefit/risk benefits/risks
benefit/harm benefits/harms strength/weakness strengths/weaknesses asset/liability assets/liabilities
credit/debit income/expense income/expenses deposit/withdraw deposit/withdrawal save/spend
saving/spending saver/spender lender/borrower creditor/debtor supply/demand bull/bear
bullish/bearish producer/consumer speaker/listener writer/reader host/guest leader/follower
master/slave primary/secondary primary/replica doctor/patient ancestor/descendant
superclass/subclass parent/child base/derived serial/parallel sequential/parallel
blocking/nonblocking stack/heap stack/queue lifo/fifo head/tail prefix/suffix
floor/ceiling floor/ceil increment/decrement ascending/descending row/column rows/columns
width/height latitude/longitude numerator/denominator multiply/divide multiplication/division
add/subtract addition/subtraction union/intersection past/future ancient/modern previous/next
prev/next last/next former/latter create/destroy build/destroy construct/demolish make/break
assemble/disassemble store/retrieve read/write reading/writing fetch/push save/load backup/restore
delete/restore create/delete open/shut pause/resume play/pause show/hide hidden/visible
expand/collapse maximize/minimize zoom/unzoom allow/block whitelist/blacklist allowlist/denylist
accept/decline approve/reject approve/deny merge/split join/split combine/separate attach/detach
concat/split select/deselect check/uncheck freeze/unfreeze block/unblock mute/unmute pin/unpin
show/unshow remember/forget login/logout signin/signout online/offline indoor/outdoor
indoors/outdoors interior/exterior inner/outer domestic/international local/remote
upward/downward uphill/downhill upstream/downstream upstairs/downstairs attract/repel
conductor/insulator acidic/alkaline acid/base masculine/feminine uncle/aunt nephew/niece
prince/princess actor/actress grandfather/grandmother grandson/granddaughter boyfriend/girlfriend
mr/mrs gains/losses gain/loss increase/reduce increase/cut overweight/underweight
overestimate/underestimate overpaid/underpaid overcooked/undercooked
"""
ANTONYMS: dict[str, set[str]] = {}
for _pair in _ANTONYM_PAIRS.split():
    _a, _b = _pair.split("/")
    ANTONYMS.setdefault(_a, set()).add(_b)
    ANTONYMS.setdefault(_b, set()).add(_a)

# Words that may replace each other in a paraphrase (a slot change between
# them is no change). Groups, read as equivalence classes.
_SYNONYM_GROUPS = """
fix repair solve resolve troubleshoot
make create build generate produce
buy purchase
huge enormous
small little tiny
begin start commence
end finish stop terminate
use utilize employ
show display print output
get obtain receive acquire
find locate discover
help assist
choose pick select
quick fast rapid speedy
quickly fast rapidly
cost price
car vehicle automobile
movie film
job work career occupation
phone telephone smartphone mobile cellphone
photo picture image photograph pic
error bug issue problem
method function
difference differ differences
learn study
meaning mean definition define meant
good great nice
smart intelligent clever
happy glad
hard difficult tough
shut close
speak talk
enough sufficient
kid child
kids children
rule regulation
house home
remove delete erase
example instance
answer reply response respond
ask query question
write compose
install setup
dataset data
tire tyre
color colour
center centre
favorite favourite
undo revert
last recent latest
tall high
quit exit leave
pan skillet
fridge refrigerator
join connect
check see view
difference different differ
big large biggest largest
trip travel journey
upgrade update
""".splitlines()
SYNONYMS: dict[str, str] = {}
for _line in _SYNONYM_GROUPS:
    _words = _line.split()
    for _w in _words:
        SYNONYMS.setdefault(_w, _words[0])

# Verbs that relate two things one way round ("does smoking cause cancer").
_RELATIONS = frozenset(
    """cause affect beat defeat eat transmit border orbit succeed precede follow replace kill attack marry
    owe pay send sue hire bite chase prefer outperform lead feed infect carry contain own buy sell give
    teach help trust depend convert translate become""".split()
)
# Links that mean the same direction: "convert A to B" is "convert A into B".
_SAME_LINK = {"into": "to", "onto": "to", "towards": "to", "toward": "to", "unto": "to"}
# Words that give the content word after them a role in a direction: where
# something comes from, and where it goes. "from London to Paris" and "to
# Paris from London" give each city the same role in the same order or not;
# "from Paris to London" swaps them whatever the word order.
_ROLES = {
    "for": "audience",
    "from": "source",
    **dict.fromkeys(("to", "into", "onto", "towards", "toward"), "target"),
}
# Words a role's phrase may start with ("to a new cat").
_DETERMINERS = frozenset("a an the my your our their his her its this that these those some".split())
# Words between two swapped names that do not make an order matter.
_SYMMETRIC = frozenset({"and", "or", "vs", "versus", "with", "between", "the", "a", "an", "&", "both", "nor"})


# --- analysis ------------------------------------------------------------------


def _stem(word: str) -> str:
    """A light stem, so that inflections match: merged/merge, making/make,
    tables/table, viruses/virus, used/use."""
    if len(word) <= 3 or not word.isalpha() or not any(c in "aeiouy" for c in word[:-2]):
        # Short words, codes, and acronyms (https is not http's plural).
        return word
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                break
            if suffix == "es" and not word.endswith(("ses", "xes", "zes", "ches", "shes")):
                continue
            word = word[: -len(suffix)]
            break
    if word.endswith("ie"):
        word = word[:-2] + "y"
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # stopped -> stopp -> stop
    return word.rstrip("e") if len(word) > 3 else word


@dataclass(frozen=True)
class _Analysis:
    tokens: tuple[str, ...]
    # Per token: its content key (stemmed, mapped to a synonym group's
    # first word), or "" for stopwords, negations and numbers.
    keys: tuple[str, ...]
    # How many negation cues: "not prevent" is not "prevent", though both negate.
    negations: int
    numbers: Counter[str]
    dates: Counter[str]
    units: Counter[str]
    entities: frozenset[str]

    @property
    def content(self) -> tuple[str, ...]:
        return tuple(k for k in self.keys if k)


def _normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"°\s*([cf])\b", r"°\1", text)
    # 5kg, 10km, 3pm: the number and the unit are separate tokens.
    text = re.sub(r"\b([0-9]+(?:\.[0-9]+)?)([a-z°%$€£]+)\b", r"\1 \2", text)
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _number(token: str) -> str | None:
    if token in _NUMBER_WORDS:
        return _NUMBER_WORDS[token]
    match = _ORDINAL.match(token)
    if match:
        return match.group(1)
    if token[:1].isdigit():
        return token.replace(",", "")
    return None


# Words in names that a paraphrase may leave out (New York City, Mount
# Everest); what remains of the name must still match.
_NAME_PARTS = frozenset("city state county river lake mount mountain island university street inc ltd co".split())


def _entities(text: str) -> frozenset[str]:
    """Names: capitalized past the first word, all caps (2+ letters), or
    letters mixed with digits; as lowercase stems."""
    found: set[str] = set()
    words = re.findall(r"[A-Za-z][A-Za-z0-9_+#.-]*", text)
    for i, word in enumerate(words):
        word = word.rstrip(".")
        lower = word.lower()
        if (
            lower in STOPWORDS
            or lower in _NUMBER_WORDS
            or lower in _DATE_WORDS
            or lower in _UNITS
            or lower in _NAME_PARTS
        ):
            continue
        named = (i > 0 and word[0].isupper()) or (len(word) >= 2 and word.isupper())
        named = named or (any(c.isdigit() for c in word) and any(c.isalpha() for c in word))
        if named:
            found.update(_stem(SYNONYMS.get(t, t)) for t in _TOKEN.findall(lower) if t not in STOPWORDS)
    return frozenset(found)


@functools.lru_cache(maxsize=4096)
def analyse(text: str) -> _Analysis:
    """What the checks compare; cached, since a stored question is
    compared again at each lookup that finds it."""
    tokens = tuple(_TOKEN.findall(_normalize(text)))
    numbers: Counter[str] = Counter()
    dates: Counter[str] = Counter()
    units: Counter[str] = Counter()
    keys: list[str] = []
    for i, token in enumerate(tokens):
        number = _number(token)
        if number is not None:
            numbers[number] += 1
        month = _MONTHS.get(token[:3]) if len(token) >= 3 and token in (*_MONTHS, *_MONTHS.values()) else None
        date = month or (token if token in _DATE_WORDS else None)
        if date is not None:
            previous = tokens[i - 1] if i else ""
            following = tokens[i + 1] if i + 1 < len(tokens) else ""
            if token not in _AMBIGUOUS_DATES or (
                previous in ("in", "of", "on", "by", "until", "since", "before", "after", "last", "next", "this")
                or _number(previous) is not None
                or (_number(following) is not None)
            ):
                dates[date] += 1
        if token in _UNITS and _next_to_number(tokens, i):
            # A unit counts beside a number ("5 km", "$ 20"): "time of year"
            # holds no quantity, and a unit word alone that differs is a
            # slot change.
            units[_UNITS[token]] += 1
        if token in STOPWORDS or token in NEGATIONS or number is not None:
            keys.append("")
        else:
            keys.append(_stem(SYNONYMS.get(token, SYNONYMS.get(_stem(token), token))))
    return _Analysis(
        tokens=tokens,
        keys=tuple(keys),
        negations=sum(t in NEGATIONS for t in tokens),
        numbers=numbers,
        dates=dates,
        units=units,
        entities=_entities(text),
    )


def _next_to_number(tokens: tuple[str, ...], i: int) -> bool:
    return any(0 <= j < len(tokens) and _number(tokens[j]) is not None for j in (i - 1, i + 1))


def _negative_forms(word: str) -> set[str]:
    return {prefix + word for prefix in _NEGATIVE_PREFIXES}


def _opposed_by_affix(one: str, other: str) -> bool:
    """Whether two words are one stem with opposed prefixes or suffixes
    (increase / decrease, upload / download, careful / careless, employer /
    employee, compress / decompress)."""
    if not (one.isalpha() and other.isalpha()):
        return False
    for left, right in _OPPOSED_PREFIXES:
        for x, y in ((one, other), (other, one)):
            if x.startswith(left) and y.startswith(right):
                stem_x, stem_y = x[len(left) :], y[len(right) :]
                if stem_x == stem_y and len(stem_x) >= _MIN_AFFIX_STEM + (not left):
                    return True
    for left, right in _OPPOSED_SUFFIXES:
        for x, y in ((one, other), (other, one)):
            if x.endswith(right) and (not left or y.endswith(left)):
                stem_x, stem_y = x[: len(x) - len(right)], y[: len(y) - len(left)]
                if stem_x == stem_y and len(stem_x) >= _MIN_AFFIX_STEM:
                    return True
    return False


def _diff(a: Counter[str], b: Counter[str]) -> str:
    only_a = sorted((a - b).elements())
    only_b = sorted((b - a).elements())
    return f"{' '.join(only_a) or '-'}/{' '.join(only_b) or '-'}"


def _order_swap(a: _Analysis, b: _Analysis) -> str:
    """Two content words both texts share, in opposite order, linked in
    both by the same word that makes order matter; "" if none."""
    pos_a = {k: i for i, k in reversed(list(enumerate(a.keys))) if k}
    pos_b = {k: i for i, k in reversed(list(enumerate(b.keys))) if k}
    words = sorted(set(pos_a) & set(pos_b), key=lambda k: pos_a[k])
    for i, first in enumerate(words):
        for second in words[i + 1 :]:
            if pos_b[first] <= pos_b[second]:
                continue
            between_a = a.tokens[pos_a[first] + 1 : pos_a[second]]
            between_b = b.tokens[pos_b[second] + 1 : pos_b[first]]
            # The same asymmetric link in both ("to", "than", "cause"): a
            # swap. A sentence turned around (active to passive) links its
            # words with other words, and is left to the threshold.
            links_a = {_SAME_LINK.get(t, t) for t in between_a if _is_link(t)}
            links_b = {_SAME_LINK.get(t, t) for t in between_b if _is_link(t)}
            # A verb both put between the two ("a landlord evicts a tenant"
            # / "a tenant evicts a landlord"): subject and object swapped.
            # Not when one is passive ("how can two tables be joined"):
            # there the object comes first.
            if not (_passive(a) or _passive(b)):
                links_a |= _verbs_between(a, pos_a[first], pos_a[second])
                links_b |= _verbs_between(b, pos_b[second], pos_b[first])
            if links_a & links_b:
                return f"{first}..{second}"
    return ""


def _permutation_swap(a: _Analysis, b: _Analysis) -> str:
    """The same content words, two of them in opposite order with words
    between them in both texts ("is gold heavier than lead" / "is lead
    heavier than gold", "mirror my iPad to my TV" / "... TV to my iPad"): a
    question made of the same words reordered is most often its reverse,
    whatever word links them. Not where only one text is passive (active
    and passive voice reorder the same words), nor where only symmetric
    words stand between ("cats and dogs"); "" if none."""
    if Counter(a.content) != Counter(b.content) or _passive(a) != _passive(b):
        return ""
    roles = _roles(a)
    if roles and roles == _roles(b):
        # Reordered but each word keeps its role ("from London to Paris" /
        # "to Paris from London").
        return ""
    pos_a = {k: i for i, k in reversed(list(enumerate(a.keys))) if k}
    pos_b = {k: i for i, k in reversed(list(enumerate(b.keys))) if k}
    words = sorted(pos_a, key=lambda k: pos_a[k])
    for i, first in enumerate(words):
        for second in words[i + 1 :]:
            if pos_b[first] <= pos_b[second]:
                continue
            between_a = a.tokens[pos_a[first] + 1 : pos_a[second]]
            between_b = b.tokens[pos_b[second] + 1 : pos_b[first]]
            if any(t not in _SYMMETRIC for t in between_a) and any(t not in _SYMMETRIC for t in between_b):
                return f"{first}..{second}"
    return ""


def _roles(a: _Analysis) -> dict[str, set[str]]:
    """Per role (source, target), the content keys of the phrases that hold
    it: the content words after "from", "to", "into" ... up to the next
    function word ("to an SQL table" holds sql and table, "to a table in
    SQL" holds table)."""
    roles: dict[str, set[str]] = {}
    for i, token in enumerate(a.tokens):
        role = _ROLES.get(token)
        if role is None:
            continue
        phrase: set[str] = set()
        for j in range(i + 1, len(a.tokens)):
            if a.keys[j]:
                phrase.add(a.keys[j])
            elif phrase or a.tokens[j] not in _DETERMINERS:
                break
        if phrase:
            roles.setdefault(role, set()).update(phrase)
    return roles


def _verbs_between(a: _Analysis, start: int, end: int) -> set[str]:
    """The content keys between two positions, less the symmetric words
    ("Python vs Java")."""
    return {a.keys[i] for i in range(start + 1, end) if a.keys[i] and a.tokens[i] not in _SYMMETRIC}


# Personal pronouns by person: (subject forms, object forms). English marks
# a pronoun's role by its case, not by word order.
_PRONOUN_CASES = (
    (frozenset({"i"}), frozenset({"me"})),
    (frozenset({"we"}), frozenset({"us"})),
    (frozenset({"he"}), frozenset({"him"})),
    (frozenset({"they"}), frozenset({"them"})),
)


def _pronoun_swap(a: _Analysis, b: _Analysis) -> str:
    """A person who is the subject in one ("can I sue my landlord") and
    the object in the other ("can my landlord sue me"), in active voice
    both: roles swapped whatever words carry them; "" if none."""
    if _passive(a) or _passive(b):
        return ""
    tokens_a, tokens_b = set(a.tokens), set(b.tokens)
    for subject, object_ in _PRONOUN_CASES:
        for one, other in ((tokens_a, tokens_b), (tokens_b, tokens_a)):
            if one & subject and not one & object_ and other & object_ and not other & subject:
                return f"{min(one & subject)}/{min(other & object_)}"
    return ""


def _role_swap(a: _Analysis, b: _Analysis) -> str:
    """A word both texts share that is where something goes (or comes from)
    in one and not in the other, while the other names another shared word
    there: "from Paris to London" / "to Paris from London" keep the roles,
    "from London to Paris" swaps them; "" if none."""
    shared = set(a.content) & set(b.content)
    roles_a, roles_b = _roles(a), _roles(b)
    for role in ("source", "target"):
        in_a = roles_a.get(role, set()) & shared
        in_b = roles_b.get(role, set()) & shared
        if in_a and in_b and not in_a & in_b:
            return f"{role}:{' '.join(sorted(in_a))}/{' '.join(sorted(in_b))}"
    return ""


_BE = frozenset("be been being is are was were get gets got".split())


def _passive(a: _Analysis) -> bool:
    """ "by" anywhere, or a form of "be"/"get" before a participle."""
    tokens = a.tokens
    return "by" in tokens or any(
        t in _BE and i + 1 < len(tokens) and tokens[i + 1].endswith(("ed", "en")) for i, t in enumerate(tokens)
    )


def _is_link(token: str) -> bool:
    """A word that makes the order of the words around it matter: a
    function word (to, than, from, into, in, over ...) or a relation."""
    if token in _SYMMETRIC or token in NEGATIONS or _number(token) is not None:
        return False
    return token in STOPWORDS or token in _RELATIONS or _stem(token) in _RELATIONS


def _slot_change(a: _Analysis, b: _Analysis, max_words: int) -> str:
    """The content words of both, in order, are the same but for one run
    of at most `max_words` words replaced by another: a template with one
    slot filled differently ("dose for adults" / "dose for children").
    Paraphrases reword more than one place, or insert and drop words."""
    matcher = difflib.SequenceMatcher(None, a.content, b.content, autojunk=False)
    changes = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    if len(changes) != 1 or changes[0][0] != "replace" or len(changes) == len(matcher.get_opcodes()):
        return ""
    _, i1, i2, j1, j2 = changes[0]
    if i2 - i1 > max_words or j2 - j1 > max_words:
        return ""
    return f"{' '.join(a.content[i1:i2])}/{' '.join(b.content[j1:j2])}"


def _added_qualifier(a: _Analysis, b: _Analysis) -> str:
    """One asks "for" someone or something (dose for seniors, diet for
    athletes) that the other does not mention at all, and the other names
    no one: the narrower question may need another answer; "" if none."""
    for one, other in ((a, b), (b, a)):
        audience = _roles(one).get("audience", set())
        if audience and not audience & set(other.content) and "audience" not in _roles(other):
            return f"for {' '.join(sorted(audience))}/-"
    return ""


def _align_synonyms(a: _Analysis, b: _Analysis, lexicon: WordNet) -> _Analysis:
    """`b` with each content word that only it has renamed to a word only
    `a` has when WordNet holds the two as synonyms in some sense (modify /
    change, frequently / often, present / gift): the checks after this one
    then see one word where a paraphrase swapped a synonym in."""
    only_a = set(a.content) - set(b.content)
    only_b = set(b.content) - set(a.content)
    if not only_a or not only_b:
        return b
    words_a = {k: t for t, k in zip(a.tokens, a.keys, strict=True) if k in only_a}
    rename: dict[str, str] = {}
    for token, key in zip(b.tokens, b.keys, strict=True):
        if key in only_b and key not in rename:
            match = next((k for k, t in words_a.items() if lexicon.synonymous(token, t)), None)
            if match is not None:
                rename[key] = match
                del words_a[match]
    if not rename:
        return b
    return replace(b, keys=tuple(rename.get(k, k) for k in b.keys))


class LexicalVerifier:
    """Structural and lexical checks (see the module's docstring).

    `max_slot_words`: the most content words a slot change replaces.
    `reworded_similarity`: the similarity a rewording must reach (content
    words on both sides that the other lacks); calibrated by
    services/cache/calibration.py."""

    name = "lexical"

    def __init__(
        self, *, max_slot_words: int = 3, reworded_similarity: float = 0.0, lexicon: WordNet | None = None
    ) -> None:
        self._max_slot_words = max_slot_words
        self._reworded_similarity = reworded_similarity
        self._wordnet = lexicon if lexicon is not None else wordnet()

    def verify(self, query: str, stored: str) -> Verdict:
        if not stored:
            return Verdict(False, Check.NO_TEXT)
        a, b = analyse(query), analyse(stored)
        if a.negations != b.negations:
            return Verdict(False, Check.NEGATION, f"{a.negations}/{b.negations} negations")
        if a.numbers != b.numbers:
            return Verdict(False, Check.NUMBER, _diff(a.numbers, b.numbers))
        if a.dates != b.dates:
            return Verdict(False, Check.DATE, _diff(a.dates, b.dates))
        if a.units != b.units:
            return Verdict(False, Check.UNIT, _diff(a.units, b.units))
        raw_a, raw_b = set(a.tokens), set(b.tokens)
        only_raw_a, only_raw_b = raw_a - raw_b, raw_b - raw_a
        for word in only_raw_a:
            negative = _negative_forms(word) & only_raw_b or {w for w in only_raw_b if word in _negative_forms(w)}
            # Two function words are no negation: "into" is not "to" negated.
            negative = {w for w in negative if not (w in STOPWORDS and word in STOPWORDS)}
            if negative:
                return Verdict(False, Check.NEGATION, f"{word}/{min(negative)}")
            opposite = ANTONYMS.get(word, set()) & only_raw_b
            opposite |= {w for w in only_raw_b if _opposed_by_affix(word, w)}
            if word not in STOPWORDS:
                # Content words only: function words' opposites (on / off,
                # no / any) are in the table above where they matter.
                opposite |= {w for w in only_raw_b if w not in STOPWORDS and self._wordnet.opposed(word, w)}
            if opposite:
                return Verdict(False, Check.ANTONYM, f"{word}/{min(opposite)}")
        b = _align_synonyms(a, b, self._wordnet)
        words_a, words_b = set(a.content), set(b.content)
        missing = {e for e in a.entities if e not in words_b and e not in raw_b}
        missing |= {e for e in b.entities if e not in words_a and e not in raw_a}
        if missing:
            return Verdict(False, Check.ENTITY, " ".join(sorted(missing)))
        swap = _order_swap(a, b) or _role_swap(a, b) or _permutation_swap(a, b) or _pronoun_swap(a, b)
        if swap:
            return Verdict(False, Check.ORDER, swap)
        if not words_a & words_b and (words_a or words_b):
            # Not one content word in common (synonyms and inflections
            # counted): whatever the vectors say, nothing shows the same ask.
            return Verdict(False, Check.UNRELATED)
        slot = _slot_change(a, b, self._max_slot_words) or _added_qualifier(a, b)
        if slot:
            return Verdict(False, Check.SLOT, slot)
        only_a, only_b = Counter(a.content) - Counter(b.content), Counter(b.content) - Counter(a.content)
        if only_a and only_b:
            # Reworded: each says something the other does not. True
            # paraphrases do this ("quit my job" / "resign"), and so do the
            # near misses no check can name (an antonym no table holds, a
            # paraphrase of a neighbouring question): accepted only from the
            # similarity calibrated for rewordings.
            return Verdict(True, Check.REWORDED, _diff(only_a, only_b), min_similarity=self._reworded_similarity)
        return ACCEPT
