"""`journey demo` (SPEC §7): a seeded synthetic population lives through a workspace on the engine.

`run_demo` drives `Runtime` in time order with the events of `Population`, a generator of users who
sign up, browse, shop, stall in onboarding, lapse, and answer the engine's messages. Same seed, same
result (for a given store kind). The model and where its numbers come from:

Who. `users` people: 20% are existing customers, who first ordered in the year before `start`
(their orders of that warm-up year are replayed first, so that win-back and the VIP track have
someone to work on, and repeat purchases can be seen a month and more apart); 80% sign up during
the `days`, uniformly by day, at an hour drawn from the traffic curve below. Time zones: a Berlin
shop's mix (76% Europe, 18% US, 6% Seoul and Tokyo; an assumption). A locale for
most users in non-English zones and some in English ones; every user has an email except 4%
(sign-in by phone), a push token about half (65% use the app, 75% of those allow push: the usual
iOS/Android opt-in), a phone number 30% (35% of those opt in to SMS with `Subscribed`); 0.5% of
sign-ups are staff test accounts.

Sessions. Each user has a session rate, lognormal with σ = 1 (heavy-tailed: a few users live in the
app): a median of 0.35 a day for a sign-up, decaying to a fifth of that with a 2-day time constant
from sign-up or their last order (the steep retention curve of apps and shops: most sign-ups do not
come back after the first days), and a flat median of 0.2 a day for existing customers. Sessions
start by the hour-of-day curve of web traffic in the user's own time zone (trough at 4:00, peak
around 20:00; each user shifted by up to two hours) and end after 30 minutes without an event. A
session has a median of 6 events (lognormal, σ = 0.6): Application Opened (most sessions of app
users) or a landing Page Viewed, then Page Viewed and Feature Used (35% in the first week, 15%
after), 40 s apart in the median. 7% of browsing sessions add 1-3 products to a cart (`Product
Added` with cartId, productId, name, price); 50% of a first-time buyer's carts reach `Checkout
Started` and 70% of those `Order Completed` (with cartId, revenue). After that, a customer's next
order comes from the CDNOW log (below) as a purchase session of its own; their carts in between are
browsing and are abandoned (20% get to checkout) unless a message brings them back. Measured on the
events handed to the engine, answers to its messages included (`TrafficResult`; 3,000 users, 30
days, seeds 1-3): median 6 events a session, 7.6-8.0% of sessions add to a cart, 68-71% of carts
are abandoned (Baymard Institute's average: 70%), 2.2-2.5% of sessions convert (the usual 2-3% of
e-commerce), about 43 events a user a month.

Repeat purchases. The CDNOW purchase log shipped inside the `lifetimes` package (69,659 orders of
23,570 customers of an online CD shop, 1997-98; read from the installed package's data file, the
package itself is never imported): after a customer's k-th order, another comes with the share of
CDNOW customers with k purchase days who made another (49% after the first, 65% after the second,
then 70-80%), one CDNOW gap between purchase days later (drawn from all 44,021 gaps: median 34 days,
quartiles 12 and 94), at an hour of that day from the traffic curve; existing customers run this
from their first order in the warm-up year. Measured on the orders of the run like CDNOW's (the
customers who first bought in the warm-up's first 90 days, followed to the end): a median gap of
27-30 days (3,000 users, seeds 1-3; see `TrafficResult`). Order values are CDNOW's, doubled (US
consumer prices 1997 -> 2026), split over the cart's products.

Onboarding. Sign-ups start at `onboarding_step` profile; at each session of their first two weeks,
60% of them move one step on (profile -> preferences -> completed, an `identify`); the other 40%
stall at profile or preferences, which is what `stuck_onboarding` and `reactivation` are for.

Answers to messages. For each send the engine makes, the user engages with a probability from
published benchmarks, times a factor for their group at the time of the send and one for the
message (`MESSAGES`): email 98% delivered (else `Email Bounced`), 22% of those opened (Mailchimp's
all-industry average), 12% of opens clicked; push opened 5% (Airship's direct open rates); in-app
messages are seen at the next session if it comes within 7 days, and clicked 15%; SMS clicked 10%.
Groups: new (signed up this week, no order) x1.3, browser (no order) x0.8, buyer x1, repeat buyer
x1.3, lapsed (no order for 30 days) x0.6. An engaged user converts with the message's rate, times
the group's: an order (on the message's cart for a journey keyed by cartId) or, for a journey whose
goal is a rule (`reactivation`), the finished set-up. Feedback follows Segment's spec: `Email
Delivered` seconds after the send, `Email Opened` a lognormal delay later (median 2 hours, skipping
the user's night), `Email Link Clicked`, `Push Opened`, `Message Clicked` (in-app, SMS), each with
properties message_id, journey, send_key (the send's idempotency key) and channel; 1% of opens
`Unsubscribed`. A click opens a short session; a conversion adds checkout and order (or the set-up
step) and restarts the user's activity decay. An order a message brings is extra: a customer's own
next purchase (CDNOW's clock) stays where it was, and only starts if none was coming. Answers are
never earlier than the last event handed to the engine (so they may come up to BATCH_WINDOW late).
The stylised part: in each `choose: best` state one candidate is clearly better for most users
(`tips_push`, `vip_perks_in_app`, `winback_in_app`, `resume_sms`) and it is not the first listed, and
the VIP messages work well; `DemoResult` compares the bandit's picks with always sending the first
eligible candidate under this same model, and holdout users, who are sent nothing and so never
answer, give the baseline of the lift.
"""

from __future__ import annotations

import heapq
import importlib.util
import itertools
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from adapters.storage.sql import SqlStore
from journey_engine.compiler import CompiledWorkspace
from journey_engine.engine import Engine, Outcome, SendMessage
from journey_engine.events import Event
from journey_engine.model import Choose
from journey_engine.ports import Batch, Store
from journey_engine.runtime import MemoryStore, Runtime

MINUTE = 60.0
HOUR = 3600.0
DAY = 86_400.0
SESSION_TIMEOUT = 30 * MINUTE
WARMUP_DAYS = 365  # the existing customers' order history replayed before `start`
COHORT_DAYS = 90  # repeat gaps are measured on the customers who first bought this early in the warm-up
# Events of up to an hour, or BATCH_MAX, per commit: the engine applies each at its own time, so the
# window only decides how late an answer may come after the send (half an hour on average); it was 15
# minutes, and the run took 1.6 times as long (SQLite, 1,000 users).
BATCH_WINDOW = HOUR
WARMUP_WINDOW = 6 * HOUR  # in the warm-up year only orders are replayed: fewer, longer batches
BATCH_MAX = 2000

# --- who ---------------------------------------------------------------------------------------------

EXISTING_SHARE = 0.20
# zone, share of users, locale, share of its users whose device reports the locale
ZONES: tuple[tuple[str, float, str, float], ...] = (
    ("Europe/Berlin", 0.38, "de-DE", 0.8), ("Europe/Vienna", 0.06, "de-AT", 0.8),
    ("Europe/Zurich", 0.05, "de-CH", 0.7), ("Europe/London", 0.10, "en-GB", 0.3),
    ("Europe/Paris", 0.07, "fr-FR", 0.7), ("Europe/Madrid", 0.05, "es-ES", 0.7),
    ("Europe/Amsterdam", 0.05, "nl-NL", 0.6), ("America/New_York", 0.09, "en-US", 0.3),
    ("America/Chicago", 0.04, "en-US", 0.3), ("America/Los_Angeles", 0.05, "en-US", 0.3),
    ("Asia/Seoul", 0.03, "ko-KR", 0.8), ("Asia/Tokyo", 0.03, "ja-JP", 0.8),
)
FIRST_NAMES = {
    "de": ("Anna", "Lukas", "Mia", "Leon", "Emma", "Finn", "Lena", "Jonas", "Sophie", "Paul"),
    "en": ("Olivia", "Noah", "Amelia", "Jack", "Emily", "James", "Ava", "Liam", "Grace", "Henry"),
    "fr": ("Louise", "Gabriel", "Jade", "Raphaël", "Chloé", "Arthur"),
    "es": ("Lucía", "Hugo", "Sofía", "Martín", "Martina", "Mateo"),
    "nl": ("Julia", "Daan", "Tess", "Sem", "Fenna", "Bram"),
    "ko": ("Seo-yeon", "Min-jun", "Ji-woo", "Seo-jun", "Ha-eun", "Do-yun"),
    "ja": ("Yui", "Haruto", "Hina", "Sota", "Aoi", "Riku"),
}
EMAIL_SHARE = 0.96
APP_SHARE = 0.65
PUSH_OPT_IN = 0.75
PHONE_SHARE = 0.30
SMS_OPT_IN = 0.35
TEST_ACCOUNTS = 0.005
SOURCES = (("ads", 0.4), ("organic", 0.35), ("referral", 0.15), ("social", 0.1))

# --- sessions ------------------------------------------------------------------------------------------

RATE_NEW = 0.35  # sessions a day right after sign-up, lognormal median
RATE_EXISTING = 0.2
RATE_SIGMA = 1.0
DECAY_FLOOR = 0.2  # a sign-up's rate decays to this share of its start...
DECAY_TAU = 2 * DAY  # ...with this time constant, from sign-up or the last order
# share of traffic by local hour, 0:00-23:00: night trough, lunch bump, evening peak
HOURLY = (0.35, 0.2, 0.12, 0.08, 0.07, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.05,
          1.15, 1.1, 1.0, 1.0, 1.05, 1.1, 1.2, 1.35, 1.45, 1.4, 1.1, 0.7)
EVENTS_MEDIAN = 6
EVENTS_SIGMA = 0.6
GAP_MEDIAN = 40.0  # seconds between events of a session
GAP_SIGMA = 0.9
GAP_MAX = 25 * MINUTE  # below the 30-minute timeout: a session never splits by itself
APP_SESSIONS = 0.85  # share of an app user's sessions that happen in the app
FEATURE_FIRST_WEEK = 0.35
FEATURE_LATER = 0.15
FEATURES = ("projects", "sharing", "wishlist", "search", "reviews", "notifications")
PAGES = ("/", "/new", "/sale", "/category/books", "/category/music", "/category/home", "/product", "/account")
CART_SHARE = 0.07
CHECKOUT_GIVEN_CART = 0.5  # first purchase
ORDER_GIVEN_CHECKOUT = 0.70
BROWSE_CHECKOUT = 0.2  # a customer between purchases sometimes gets as far as checkout
ITEMS = (1, 1, 1, 2, 2, 3)
PRODUCTS = ("Linen shirt", "Desk lamp", "Ceramic mug", "Running shoes", "Backpack", "Headphones",
            "Notebook set", "Wool scarf", "Water bottle", "Board game", "Plant pot", "Sunglasses")
PRICE_FACTOR = 2.0  # CDNOW's 1997 dollars in 2026 money
ONBOARDING = ("profile", "preferences", "completed")
ADVANCE = 0.6
STALLERS = 0.4
ONBOARDING_DAYS = 14

# --- answers to messages -------------------------------------------------------------------------------

EMAIL_DELIVERED = 0.98
EMAIL_OPEN = 0.22
EMAIL_CLICK = 0.12  # of opens
PUSH_OPEN = 0.05
IN_APP_CLICK = 0.15
IN_APP_SEEN_WITHIN = 7 * DAY
SMS_CLICK = 0.10
UNSUBSCRIBE = 0.01  # of opens
CAP = 0.9  # no probability of the model goes above this
# group at send time: (engagement factor, conversion factor)
GROUPS: dict[str, tuple[float, float]] = {
    "new": (1.3, 1.0), "browser": (0.8, 0.8), "buyer": (1.0, 1.0), "repeat": (1.3, 1.4), "lapsed": (0.6, 0.9),
}
# message: (appeal: engagement factor, conversion rate of the engaged)
MESSAGES: dict[str, tuple[float, float]] = {
    "welcome_email": (1.5, 0.04), "tips_email": (1.0, 0.05), "tips_push": (2.0, 0.30),
    "first_order_push": (1.5, 0.25), "first_order_email": (1.2, 0.25), "activated_in_app": (1.0, 0.05),
    "cart_reminder_push": (1.8, 0.25), "cart_reminder_email": (1.3, 0.25), "cart_discount_email": (1.4, 0.35),
    "winback_email_a": (1.0, 0.15), "winback_email_b": (1.3, 0.18), "winback_push": (1.0, 0.10),
    "winback_in_app": (1.5, 0.35), "winback_last_chance_email": (1.1, 0.20),
    "vip_welcome_email": (2.0, 0.50), "vip_welcome_in_app": (2.0, 0.50), "vip_perks_email": (1.0, 0.10),
    "vip_perks_push": (1.0, 0.20), "vip_perks_in_app": (2.0, 0.50), "points_push": (1.3, 0.30),
    "points_email": (1.2, 0.30), "gold_email": (1.5, 0.05),
    "resume_in_app": (1.5, 0.40), "resume_email": (1.2, 0.35), "resume_push": (1.0, 0.25), "resume_sms": (1.0, 0.60),
}
DEFAULT_MESSAGE = (1.0, 0.10)
# events that are not the user on the site or in the app: no part of a session
OFF_SITE = frozenset({"Signed Up", "Subscribed", "Email Delivered", "Email Bounced", "Email Opened", "Unsubscribed"})
CLICK_EVENTS = {"email": "Email Link Clicked", "push": "Push Opened", "in_app": "Message Clicked",
                "sms": "Message Clicked"}

# heap item kinds
_EVENT, _SIGNUP, _SESSION, _REPEAT = 0, 1, 2, 3


# --- the CDNOW purchase log ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PurchaseLog:
    """What the demo takes from CDNOW: gaps between purchase days, order values, and who comes back."""

    gaps: tuple[int, ...]  # days between a customer's consecutive purchase days
    values: tuple[float, ...]  # order values, 1997 dollars
    again: tuple[float, ...]  # again[k-1]: share of customers with k purchase days who had another


@cache
def cdnow() -> PurchaseLog:
    """The CDNOW master log (Fader & Hardie) as shipped in the installed `lifetimes` package."""
    spec = importlib.util.find_spec("lifetimes")  # finds the package without importing pandas and scipy
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the demo draws repeat purchases from the CDNOW log in the `lifetimes` "
                                  "package: pip install lifetimes")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"
    days: dict[str, set[int]] = {}
    values: list[float] = []
    for line in path.read_text().splitlines()[1:]:
        customer, date, _, value = line.split()
        ordinal = datetime(int(date[:4]), int(date[4:6]), int(date[6:])).toordinal()
        days.setdefault(customer, set()).add(ordinal)
        if float(value) > 0:
            values.append(float(value))
    gaps: list[int] = []
    counts = Counter(len(d) for d in days.values())
    for d in days.values():
        ordered = sorted(d)
        gaps.extend(b - a for a, b in itertools.pairwise(ordered))
    at_least = [sum(n for k, n in counts.items() if k >= m) for m in range(1, 12)]
    again = tuple(at_least[k + 1] / at_least[k] for k in range(10))
    return PurchaseLog(gaps=tuple(sorted(gaps)), values=tuple(sorted(values)), again=again)


# --- results -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChoiceResult:
    """One `choose: best` state: the bandit's picks against always sending the first-listed candidate.

    Rates are conversions per decision expected under the response model (the probability that this
    user, sent this message, answers it with the goal), so the comparison is free of sampling noise.
    """

    journey: str
    state: str
    candidates: tuple[str, ...]
    decisions: int  # sends decided by the bandit
    with_choice: int  # of them, with two or more eligible candidates
    picks: dict[str, int]
    conversions: int  # realised: answers to the bandit's picks that reached the goal
    adaptive_rate: float
    fixed_rate: float  # the first-listed eligible candidate, every time
    best_rate: float  # the best candidate for each user, every time (the ceiling)

    @property
    def lift(self) -> float | None:
        return self.adaptive_rate / self.fixed_rate - 1 if self.fixed_rate else None


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldoutResult:
    """A journey with a holdout: entrants who ordered again within the goal window, treated against held out.

    Like with like: both groups are the journey's first entries whose whole goal window lies inside the
    run (entered at least `within_days` before its end, the warm-up year included), and a conversion is
    an order after the one they entered with, within the window. The engine picks the held-out users by
    a hash of their id, so the two groups differ only in the messages.
    """

    journey: str
    within_days: float
    treated: int
    treated_converted: int
    holdout: int
    holdout_converted: int
    too_late: int  # entrants left out: their goal window was still open at the end

    @property
    def treated_rate(self) -> float | None:
        return self.treated_converted / self.treated if self.treated else None

    @property
    def holdout_rate(self) -> float | None:
        return self.holdout_converted / self.holdout if self.holdout else None

    @property
    def lift(self) -> float | None:
        t, h = self.treated_rate, self.holdout_rate
        return t / h - 1 if t is not None and h else None

    @property
    def difference(self) -> float | None:
        t, h = self.treated_rate, self.holdout_rate
        return t - h if t is not None and h is not None else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% interval of the difference of rates (Newcombe's hybrid score, as `journey report`)."""
        from adapters.reports import newcombe_interval

        if not self.treated or not self.holdout:
            return None
        return newcombe_interval(self.treated_converted, self.treated, self.holdout_converted, self.holdout)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficResult:
    """The population's behaviour in the period, measured on the events handed to the engine (answers to
    messages included): sessions cut after 30 minutes without an event, not counting sign-up records and
    email delivery and opens (they happen off the site).

    Repeat gaps: days between a customer's consecutive purchase days (as CDNOW counts them), over the
    orders of the run, the replayed warm-up year included (a 30-day period alone could not show a gap
    of more than 30 days). Like CDNOW's, whose customers all first bought in its first quarter and were
    followed for 18 months, `repeat_gap_median` is over the cohort that first bought in the first 90
    days of the warm-up, followed to the end; `repeat_gap_median_all` over every customer is lower,
    because the later a customer starts, the fewer of their long gaps end inside the run.
    """

    sessions: int
    median_events: float
    add_to_cart: float  # share of sessions with a Product Added
    carts: int
    abandoned: float  # share of the period's carts never ordered
    converted: float  # share of sessions with an Order Completed
    repeat_gaps: int  # of the cohort
    repeat_gap_median: float
    repeat_gap_median_all: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupResult:
    """Sends to one group of users (by where they were when the message went out) and their answers."""

    sends: int = 0
    engaged: int = 0  # opened a push, clicked an email, an in-app message or an SMS
    conversions: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoResult:
    """What a demo run did. Counts cover the whole run, the existing customers' replayed orders included."""

    users: int
    days: int
    seed: int
    start: datetime
    end: datetime
    warmup_days: int
    events: int
    events_by_name: dict[str, int]
    sessions: dict[str, int]  # organic, purchase (a CDNOW repeat), message (opened from a message)
    sends: int
    sends_by_message: dict[str, int]
    sends_by_channel: dict[str, int]
    feedback: dict[str, int]  # Email Delivered, Email Opened, ... as sent to the engine
    orders: dict[str, int]  # history (replayed), organic, repeat, message
    revenue: float
    population: dict[str, dict[str, int]]  # signups / existing: users, buyers, orders (in the period)
    groups: dict[str, GroupResult]
    journeys: dict[str, dict[str, int]]  # entered, goals
    choices: tuple[ChoiceResult, ...]
    holdouts: tuple[HoldoutResult, ...]
    traffic: TrafficResult
    elapsed_seconds: float

    @property
    def adaptive_rate(self) -> float:
        """Expected conversions per decision of every `choose: best` state, the bandit's picks."""
        decisions = sum(c.decisions for c in self.choices)
        return sum(c.adaptive_rate * c.decisions for c in self.choices) / decisions if decisions else 0.0

    @property
    def fixed_rate(self) -> float:
        decisions = sum(c.decisions for c in self.choices)
        return sum(c.fixed_rate * c.decisions for c in self.choices) / decisions if decisions else 0.0

    @property
    def adaptive_beat_fixed(self) -> bool:
        return self.adaptive_rate > self.fixed_rate

    def numbers(self) -> dict[str, Any]:
        """Everything but the time it took: equal for two runs with the same seed."""
        data = asdict(self)
        data.pop("elapsed_seconds")
        return data


# --- the population --------------------------------------------------------------------------------------


class _User:
    __slots__ = ("app", "carts", "email", "epoch", "existing", "id", "locale", "name", "next_session", "orders",
                 "phone", "push", "rate", "repeat_at", "session", "shift", "signup", "since", "sms", "stall_at", "step",
                 "test", "zone")

    def __init__(self, index: int) -> None:
        self.id = f"u{index}"
        self.zone: ZoneInfo = UTC  # type: ignore[assignment]
        self.locale: str | None = None
        self.name = ""
        self.shift = 0  # hours: this user's day runs a little earlier or later than the curve
        self.existing = False
        self.email = self.app = self.push = self.phone = self.sms = self.test = False
        self.rate = 0.0  # sessions a day
        self.since: float | None = None  # the activity decay runs from here; None: no decay
        self.signup: float | None = None
        self.step = 2  # index in ONBOARDING
        self.stall_at = 2
        self.orders: list[float] = []
        self.epoch = 0  # the pending repeat purchase belongs to this epoch; a new order starts a new one
        self.repeat_at: float | None = None  # when the pending repeat purchase comes, if one does
        self.session: list[Any] | None = None  # [last event, events, added to cart, ordered]: the traffic count
        self.next_session: float | None = None
        self.carts = 0


@dataclass(slots=True)
class _Decision:
    """A `choose: best` pick, waiting for the send and the answer."""

    eligible: tuple[str, ...]
    picked: str = ""
    expected: float = 0.0
    fixed: float = 0.0
    best: float = 0.0
    converted: bool = False


@dataclass(slots=True)
class _Tally:
    choices: dict[tuple[str, str], list[_Decision]] = field(default_factory=dict)
    entrants: dict[str, dict[str, tuple[float, bool]]] = field(default_factory=dict)  # holdout journeys
    journeys: dict[str, dict[str, int]] = field(default_factory=dict)
    groups: dict[str, list[int]] = field(default_factory=dict)


class Population:
    """The synthetic users, as a stream of engine events in time order (see the module docstring).

    Without a workspace it only generates (the statistics tests use that); with one, `observe` takes
    the engine's outcomes and schedules the users' answers to its sends into the same stream.
    """

    def __init__(self, compiled: CompiledWorkspace | None = None, *, users: int = 10_000, days: int = 30,
                 seed: int = 7, start: datetime = datetime(2026, 3, 2, tzinfo=UTC)) -> None:
        self.rng = random.Random(seed)
        self.answers = random.Random(seed + 1)  # whether and when users answer: drawn apart from their habits
        self.log = cdnow()
        self.start = start.timestamp()
        self.end = self.start + days * DAY
        self.first = self.start - WARMUP_DAYS * DAY
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.seq = itertools.count()
        self.frontier = self.first
        self.events = Counter[str]()
        self.sessions = Counter[str]()
        self.orders = Counter[str]()
        self.revenue = 0.0
        self._sizes: list[int] = []  # events of each closed session of the period
        self._with_cart = self._with_order = 0
        self._carts: set[str] = set()
        self._bought: set[str] = set()
        self._hour_weights = [[HOURLY[(h - s) % 24] / max(HOURLY) for h in range(24)] for s in range(-2, 3)]
        self._hour_cum = [list(itertools.accumulate(w)) for w in self._hour_weights]
        self._zones = {name: ZoneInfo(name) for name, *_ in ZONES}
        self.users = [self._user(i) for i in range(users)]
        self.tally = _Tally()
        self.workspace = _WorkspaceFacts(compiled) if compiled is not None else None
        self._ineligible: dict[tuple[str, str, str | None, str], tuple[str, set[str]]] = {}
        self._decisions: dict[tuple[str, str, str | None, str, str], _Decision] = {}
        for user in self.users:
            if user.existing:
                self._history(user)
            else:
                self._push(self._signup_time(user), _SIGNUP, user)

    # --- the stream -------------------------------------------------------------------------------------

    def next_batch(self, until: float) -> list[Event]:
        """The next events before `until`, in time order, at most BATCH_MAX of them."""
        heap = self.heap
        batch: list[Event] = []
        until = min(until, self.end)
        while heap and len(batch) < BATCH_MAX:
            at, seq, kind, index, payload = heap[0]
            if at >= until:
                break
            heapq.heappop(heap)
            user = self.users[index]
            if kind == _EVENT:
                batch.append(self._event(at, seq, user, payload))
                self.frontier = at
            elif kind == _SESSION:
                self._organic(user, at)
            elif kind == _SIGNUP:
                self._sign_up(user, at)
            elif payload == user.epoch:  # _REPEAT, still the customer's next purchase
                user.repeat_at = None
                self.sessions["purchase"] += 1
                self._session(user, at, buy="repeat")
        return batch

    def clock(self, at: float) -> None:
        """The engine has run up to `at`: answers to what it sends now come no earlier."""
        self.frontier = max(self.frontier, at)

    def windows(self) -> Iterator[tuple[float, float]]:
        """(from, until) of each batch: BATCH_WINDOW long (WARMUP_WINDOW in the warm-up), or cut short where
        a batch filled up."""
        at = self.first
        while at < self.end:
            until = min(at + WARMUP_WINDOW, self.start) if at < self.start else min(at + BATCH_WINDOW, self.end)
            yield at, until
            # a full batch, or answers to its sends, left events before `until`: go on from the last one
            left = bool(self.heap) and self.heap[0][0] < until
            at = max(at, self.frontier) if left else until

    def batches(self) -> Iterator[list[Event]]:
        """Every event of the run, without an engine (so nobody answers a message)."""
        for _, until in self.windows():
            if batch := self.next_batch(until):
                yield batch

    def _push(self, at: float, kind: int, user: _User, payload: Any = None) -> None:
        heapq.heappush(self.heap, (at, next(self.seq), kind, int(user.id[1:]), payload))

    def _emit(self, at: float, user: _User, kind: str, name: str | None, properties: dict[str, Any] | None = None,
              traits: dict[str, Any] | None = None) -> None:
        self._push(round(at, 3), _EVENT, user, (kind, name, properties, traits))

    def _track(self, at: float, user: _User, name: str, properties: dict[str, Any] | None = None) -> None:
        self._emit(at, user, "track", name, properties)

    def _event(self, at: float, seq: int, user: _User, payload: tuple[Any, ...]) -> Event:
        kind, name, properties, traits = payload
        self.events[name or kind] += 1
        if at >= self.start and kind != "identify" and name not in OFF_SITE:
            self._count(at, user, name, properties)
        return Event(type=kind, user_id=user.id, name=name, timestamp=datetime.fromtimestamp(at, UTC),
                     properties=properties or {}, traits=traits or {}, message_id=f"d{seq:x}")

    def _count(self, at: float, user: _User, name: str, properties: dict[str, Any]) -> None:
        """Cut the user's events of the period into sessions as an analytics tool would, for `TrafficResult`."""
        session = user.session
        if session is None or at - session[0] > SESSION_TIMEOUT:
            if session is not None:
                self._close(session)
            session = user.session = [at, 0, False, False]
        session[0] = at
        session[1] += 1
        if name == "Product Added":
            session[2] = True
            self._carts.add(properties["cartId"])
        elif name == "Order Completed":
            session[3] = True
            if "cartId" in properties:
                self._bought.add(properties["cartId"])

    def _close(self, session: list[Any]) -> None:
        self._sizes.append(session[1])
        self._with_cart += session[2]
        self._with_order += session[3]

    def traffic(self) -> TrafficResult:
        """The figures of the module docstring, measured on the events handed to the engine so far."""
        for user in self.users:
            if user.session is not None:
                self._close(user.session)
                user.session = None
        gaps, cohort = [], []
        for user in self.users:
            days = sorted({int(at // DAY) for at in user.orders if at < self.end})
            found = [b - a for a, b in itertools.pairwise(days)]
            gaps += found
            if days and days[0] * DAY < self.first + COHORT_DAYS * DAY:
                cohort += found
        sessions = len(self._sizes)
        return TrafficResult(
            sessions=sessions, median_events=statistics.median(self._sizes) if sessions else 0.0,
            add_to_cart=round(self._with_cart / sessions, 4) if sessions else 0.0,
            carts=len(self._carts),
            abandoned=round(1 - len(self._carts & self._bought) / len(self._carts), 4) if self._carts else 0.0,
            converted=round(self._with_order / sessions, 4) if sessions else 0.0,
            repeat_gaps=len(cohort), repeat_gap_median=statistics.median(cohort) if cohort else 0.0,
            repeat_gap_median_all=statistics.median(gaps) if gaps else 0.0)

    # --- who ----------------------------------------------------------------------------------------------

    def _user(self, index: int) -> _User:
        rng = self.rng
        user = _User(index)
        zone, _, locale, share = rng.choices(ZONES, weights=[z[1] for z in ZONES])[0]
        user.zone = self._zones[zone]
        if rng.random() < share:
            user.locale = locale
        language = (user.locale or locale).split("-")[0]
        user.name = rng.choice(FIRST_NAMES.get(language, FIRST_NAMES["en"]))
        user.shift = rng.randint(-2, 2)
        user.email = rng.random() < EMAIL_SHARE
        user.app = rng.random() < APP_SHARE or not user.email
        user.push = user.app and rng.random() < PUSH_OPT_IN
        user.phone = rng.random() < PHONE_SHARE or not user.email
        user.sms = user.phone and rng.random() < SMS_OPT_IN
        user.existing = rng.random() < EXISTING_SHARE
        median = RATE_EXISTING if user.existing else RATE_NEW
        user.rate = median * rng.lognormvariate(0, RATE_SIGMA)
        if not user.existing:
            user.test = rng.random() < TEST_ACCOUNTS
            user.step = 0
            user.stall_at = rng.choice((0, 1)) if rng.random() < STALLERS else 2
        return user

    def _traits(self, user: _User, created: float) -> dict[str, Any]:
        traits: dict[str, Any] = {"first_name": user.name, "timezone": user.zone.key,
                                  "created_at": datetime.fromtimestamp(round(created), UTC),
                                  "onboarding_step": ONBOARDING[user.step]}
        if user.email:
            traits["email"] = f"{user.name.lower().replace(' ', '')}.{user.id}@example.com"
        if user.locale:
            traits["locale"] = user.locale
        if user.push:
            traits["push_token"] = f"tok-{user.id}"
        if user.phone:
            traits["phone"] = f"+4915{int(user.id[1:]):09d}"
        if user.test:
            traits["is_test_account"] = True
        return traits

    def _signup_time(self, user: _User) -> float:
        while True:
            at = self._local_time(user, self.start + self.rng.random() * (self.end - self.start))
            if self.start <= at < self.end:
                return at

    def _sign_up(self, user: _User, at: float) -> None:
        rng = self.rng
        user.signup = user.since = at
        self._emit(at, user, "identify", None, traits=self._traits(user, at))
        source = rng.choices([s for s, _ in SOURCES], weights=[w for _, w in SOURCES])[0]
        self._track(at + 1, user, "Signed Up", {"source": source})
        if user.sms:
            self._track(at + 2, user, "Subscribed", {"subscription": "sms_marketing"})
        self.sessions["organic"] += 1
        end = self._session(user, at + 3)
        self._next(user, end)

    def _history(self, user: _User) -> None:
        """An existing customer: a first order in the warm-up year, then CDNOW's repeat process, replayed;
        the order that falls after `start` is their first repeat purchase of the run."""
        rng, log = self.rng, self.log
        at = self._local_time(user, self.first + rng.random() * (self.start - self.first - DAY))
        orders: list[float] = []
        upcoming: float | None = None
        while True:
            orders.append(at)
            if rng.random() >= log.again[min(len(orders), len(log.again)) - 1]:
                break
            upcoming = max(self._local_time(user, at + rng.choice(log.gaps) * DAY), at + HOUR)
            if upcoming >= self.start:
                break
            at, upcoming = upcoming, None
        created = orders[0] - rng.uniform(1, 365) * DAY
        self._emit(orders[0] - 60, user, "identify", None, traits=self._traits(user, created))
        for at in orders:
            self.orders["history"] += 1
            revenue = self._value()
            self.revenue += revenue
            self._track(at, user, "Order Completed",
                        {"orderId": f"o-{user.id}-{len(user.orders)}", "revenue": revenue, "currency": "EUR"})
            user.orders.append(at)
        user.epoch += 1
        if upcoming is not None and upcoming < self.end:
            user.repeat_at = upcoming
            self._push(upcoming, _REPEAT, user, user.epoch)
        self._next(user, self.start - SESSION_TIMEOUT)

    # --- sessions --------------------------------------------------------------------------------------

    def _organic(self, user: _User, at: float) -> None:
        self.sessions["organic"] += 1
        end = self._session(user, at)
        self._next(user, end)

    def _next(self, user: _User, after: float) -> None:
        """Schedule the user's next session: a Poisson process thinned by hour of day and decay."""
        rng = self.rng
        weights = self._hour_weights[user.shift + 2]
        peak = user.rate / DAY * max(HOURLY) / (sum(HOURLY) / 24)
        at = after + SESSION_TIMEOUT
        while True:
            at += rng.expovariate(peak)
            if at >= self.end:
                user.next_session = None
                return
            accept = weights[datetime.fromtimestamp(at, user.zone).hour]
            if user.since is not None:
                accept *= DECAY_FLOOR + (1 - DECAY_FLOOR) * math.exp(-(at - user.since) / DECAY_TAU)
            if rng.random() < accept:
                user.next_session = at
                self._push(at, _SESSION, user)
                return

    def _session(self, user: _User, at: float, *, buy: str | None = None, first: str | None = None,
                 events: int | None = None, cart: str | None = None, setup: bool = False) -> float:
        """Emit one session from `at`; `buy` makes it end with an order. Returns its last event's time."""
        rng = self.rng
        n = events if events is not None else max(1, round(EVENTS_MEDIAN * rng.lognormvariate(0, EVENTS_SIGMA)))
        if first is None:
            first = "Application Opened" if user.app and rng.random() < APP_SESSIONS else "Page Viewed"
        t = at
        if n:
            self._page_or_track(t, user, first)
        new = user.signup is not None and at - user.signup < 7 * DAY
        feature = FEATURE_FIRST_WEEK if new else FEATURE_LATER
        for _ in range(n - 1):
            t += self._gap()
            if rng.random() < feature:
                self._track(t, user, "Feature Used", {"feature": rng.choice(FEATURES)})
            else:
                self._page_or_track(t, user, "Page Viewed")
        onboarding = user.signup is not None and at - user.signup < ONBOARDING_DAYS * DAY
        if user.step < 2 and (setup or (onboarding and user.step < user.stall_at and rng.random() < ADVANCE)):
            user.step = 2 if setup else user.step + 1
            t += self._gap()
            self._emit(t, user, "identify", None, traits={"onboarding_step": ONBOARDING[user.step]})
        if buy is None and cart is None and rng.random() >= CART_SHARE:
            return t
        if buy is None and not user.orders:  # a first purchase happens while browsing
            if rng.random() < CHECKOUT_GIVEN_CART:
                buy = "organic" if rng.random() < ORDER_GIVEN_CHECKOUT else "checkout"
        elif buy is None and rng.random() < BROWSE_CHECKOUT:
            buy = "checkout"
        return self._cart(user, t, buy, cart)

    def _cart(self, user: _User, t: float, buy: str | None, cart: str | None) -> float:
        rng = self.rng
        value = self._value()
        if cart is None:
            user.carts += 1
            cart = f"c-{user.id}-{user.carts}"
            items = rng.choice(ITEMS)
            shares = [rng.random() + 0.2 for _ in range(items)]
            for share in shares:
                t += self._gap()
                product = rng.randrange(len(PRODUCTS))
                price = round(value * share / sum(shares), 2)
                self._track(t, user, "Product Added", {"cartId": cart, "productId": f"p{product}",
                                                       "name": PRODUCTS[product], "price": price})
        if buy is None:
            return t
        t += self._gap()
        self._track(t, user, "Checkout Started", {"cartId": cart, "value": value})
        if buy == "checkout":
            return t
        t += self._gap()
        self._order(user, t, buy, cart, value)
        return t

    def _order(self, user: _User, at: float, source: str, cart: str, value: float) -> None:
        rng = self.rng
        self.orders[source] += 1
        self.revenue += value
        self._track(at, user, "Order Completed", {"orderId": f"o-{user.id}-{len(user.orders)}", "cartId": cart,
                                                  "revenue": value, "currency": "EUR"})
        user.orders.append(at)
        if user.since is not None:
            user.since = at
        if source == "message" and user.repeat_at is not None and user.repeat_at > at:
            return  # an order a message brought is extra: the customer's own next purchase stays where it was
        user.epoch += 1
        user.repeat_at = None
        if rng.random() < self._again(user):
            when = max(self._local_time(user, at + rng.choice(self.log.gaps) * DAY), at + HOUR)
            if when < self.end:
                user.repeat_at = when
                self._push(when, _REPEAT, user, user.epoch)

    def _again(self, user: _User) -> float:
        again = self.log.again
        return again[min(len(user.orders), len(again)) - 1]

    def _value(self) -> float:
        return round(self.rng.choice(self.log.values) * PRICE_FACTOR, 2)

    def _gap(self) -> float:
        return min(GAP_MAX, GAP_MEDIAN * self.rng.lognormvariate(0, GAP_SIGMA))

    def _page_or_track(self, at: float, user: _User, name: str) -> None:
        if name == "Page Viewed":
            self._emit(at, user, "page", "Page Viewed", {"path": self.rng.choice(PAGES)})
        else:
            self._track(at, user, name)

    def _local_time(self, user: _User, at: float) -> float:
        """A time on the same local day as `at`, at an hour drawn from the user's traffic curve."""
        rng = self.rng
        cum = self._hour_cum[user.shift + 2]
        hour = next(h for h, c in enumerate(cum) if c >= rng.random() * cum[-1])
        local = datetime.fromtimestamp(at, user.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight.timestamp() + (hour + rng.random()) * HOUR

    def _awake(self, user: _User, at: float) -> float:
        """The first moment from `at` the user is around to read a message: night hours are skipped."""
        weights = self._hour_weights[user.shift + 2]
        while self.answers.random() > weights[datetime.fromtimestamp(at, user.zone).hour]:
            at += 20 * MINUTE
        return at

    # --- answers ---------------------------------------------------------------------------------------

    def group(self, user: _User, at: float) -> str:
        """Where the user is when a message reaches them: the response model's groups."""
        if not user.orders:
            return "new" if user.signup is not None and at - user.signup < 7 * DAY else "browser"
        if at - user.orders[-1] > 30 * DAY:
            return "lapsed"
        return "repeat" if len(user.orders) >= 2 else "buyer"

    def chance(self, user: _User, message: str, channel: str, at: float) -> tuple[float, float]:
        """(P(engage), P(goal | engaged)) for this user sent this message at `at`."""
        appeal, convert = MESSAGES.get(message, DEFAULT_MESSAGE)
        engage, conversion = GROUPS[self.group(user, at)]
        if channel == "email":
            p = EMAIL_DELIVERED * min(CAP, EMAIL_OPEN * engage * appeal) * EMAIL_CLICK
        elif channel == "push":
            p = min(CAP, PUSH_OPEN * engage * appeal)
        elif channel == "in_app":
            seen = user.next_session is not None and user.next_session - at <= IN_APP_SEEN_WITHIN
            p = min(CAP, IN_APP_CLICK * engage * appeal) if seen else 0.0
        elif channel == "sms":
            p = min(CAP, SMS_CLICK * engage * appeal)
        else:
            p = 0.0
        return p, min(CAP, convert * conversion)

    def observe(self, outcome: Outcome) -> None:
        """Learn from the engine's trace what it decided, and schedule the users' answers to its sends."""
        if self.workspace is None:
            return
        for record in outcome.records:
            self._record(record)
        for send in sorted(outcome.sends, key=lambda s: (s.at, s.idempotency_key)):
            self._answer(send)

    def _record(self, r: dict[str, Any]) -> None:
        kind = r["kind"]
        facts = self.workspace
        assert facts is not None
        if kind == "journey_entered":
            stats = self.tally.journeys.setdefault(r["journey"], {"entered": 0, "goals": 0})
            stats["entered"] += 1
            if r["journey"] in facts.holdouts:
                entrants = self.tally.entrants.setdefault(r["journey"], {})
                if r["user"] not in entrants:
                    entrants[r["user"]] = (_parse(r["at"]), bool(r.get("holdout")))
        elif kind == "goal_reached":
            self.tally.journeys.setdefault(r["journey"], {"entered": 0, "goals": 0})["goals"] += 1
        elif kind.startswith("message_") and (r["journey"], r["state"]) in facts.choices:
            self._choice(r, kind)

    def _choice(self, r: dict[str, Any], kind: str) -> None:
        """Pair a `choose: best` pick with the candidates that were eligible when it was made."""
        assert self.workspace is not None
        state = (r["user"], r["journey"], r["key"], r["state"])
        if kind == "message_suppressed" and r.get("reason") == "ineligible":
            at, found = self._ineligible.get(state, ("", set()))
            if at != r["at"]:
                found = set()
            found.add(r["message"])
            self._ineligible[state] = (r["at"], found)
            return
        pick = (*state, r["message"])
        if pick in self._decisions:  # a pick deferred earlier, sent or dropped now
            if kind == "message_suppressed":
                del self._decisions[pick]
            return
        at, ineligible = self._ineligible.pop(state, ("", set()))
        candidates = self.workspace.choices[(r["journey"], r["state"])]
        eligible = tuple(m for m in candidates if at != r["at"] or m not in ineligible)
        if kind in ("message_sent", "message_deferred"):
            self._decisions[pick] = _Decision(eligible=eligible)

    def _answer(self, send: SendMessage) -> None:
        facts = self.workspace
        assert facts is not None
        user = self._find(send.user)
        if user is None:
            return
        at = send.at.timestamp()
        decision = self._decisions.pop((send.user, send.journey, send.key, send.state, send.message), None)
        if decision is not None:
            self._decided(user, send, at, decision)
        group = self.tally.groups.setdefault(self.group(user, at), [0, 0, 0])
        group[0] += 1
        engage, convert = self.chance(user, send.message, send.channel, at)
        engaged_at = self._feedback(user, send, at, engage)
        if engaged_at is None:
            return
        group[1] += 1
        rng = self.answers
        converted = rng.random() < convert
        if converted:
            group[2] += 1
            if decision is not None:
                decision.converted = True
        self.sessions["message"] += 1
        first = "Application Opened" if send.channel in ("push", "in_app") else "Page Viewed"
        events = 0 if send.channel == "in_app" else max(1, round(3 * rng.lognormvariate(0, 0.6)))
        action = facts.actions.get(send.journey, "order")
        if not converted:
            self._session(user, engaged_at + 5, first=first, events=events)
        elif action == "setup":
            self._session(user, engaged_at + 5, first=first, events=events, setup=True)
        else:
            cart = str(send.key) if send.key is not None and facts.keys.get(send.journey) == "cartId" else None
            self._session(user, engaged_at + 5, first=first, events=events, buy="message", cart=cart)
        if user.since is not None:
            user.since = max(user.since, engaged_at)

    def _feedback(self, user: _User, send: SendMessage, at: float, engage: float) -> float | None:
        """Emit the message's feedback events; return when the user engaged, or None."""
        rng = self.answers
        props = {"message_id": send.message, "journey": send.journey, "send_key": send.idempotency_key,
                 "channel": send.channel}
        now = max(at, self.frontier)
        if send.channel == "email":
            delivered = now + rng.uniform(2, 30)
            if rng.random() >= EMAIL_DELIVERED:
                self._track(delivered, user, "Email Bounced", props)
                return None
            self._track(delivered, user, "Email Delivered", props)
            opened = engage / (EMAIL_DELIVERED * EMAIL_CLICK)
            if rng.random() >= opened:
                return None
            open_at = max(delivered + 1, self._awake(user, at + 2 * HOUR * rng.lognormvariate(0, 1.2)))
            self._track(open_at, user, "Email Opened", props)
            if rng.random() < UNSUBSCRIBE and self.workspace and self.workspace.subscriptions.get(send.message):
                self._track(open_at + 30, user, "Unsubscribed",
                            {**props, "subscription": self.workspace.subscriptions[send.message]})
                return None
            if rng.random() >= EMAIL_CLICK:
                return None
            click_at = open_at + 40 * rng.lognormvariate(0, 0.8)
        elif send.channel == "in_app":
            if rng.random() >= engage or user.next_session is None:
                return None
            click_at = max(now, user.next_session + 20 * rng.lognormvariate(0, 0.5))
        elif send.channel in ("push", "sms"):
            if rng.random() >= engage:
                return None
            click_at = max(now, self._awake(user, at + 4 * MINUTE * rng.lognormvariate(0, 1.2)))
        else:
            return None
        if click_at >= self.end:
            return None
        self._track(click_at, user, CLICK_EVENTS[send.channel], props)
        return click_at

    def _find(self, user_id: str) -> _User | None:
        """One of ours (a store that was not empty may hold other users)."""
        index = int(user_id[1:]) if user_id[1:].isdigit() else -1
        return self.users[index] if 0 <= index < len(self.users) and self.users[index].id == user_id else None

    def _decided(self, user: _User, send: SendMessage, at: float, decision: _Decision) -> None:
        chances = {}
        for message in decision.eligible:
            channel = self.workspace.channels[message] if self.workspace else send.channel
            engage, convert = self.chance(user, message, channel, at)
            chances[message] = engage * convert
        decision.picked = send.message
        decision.expected = chances.get(send.message, 0.0)
        decision.fixed = chances[decision.eligible[0]] if decision.eligible else decision.expected
        decision.best = max(chances.values(), default=decision.expected)
        self.tally.choices.setdefault((send.journey, send.state), []).append(decision)

    # --- the result ---------------------------------------------------------------------------------------

    def result(self, *, seed: int, elapsed: float, sends: Counter[str], channels: Counter[str]) -> DemoResult:
        facts = self.workspace
        choices = []
        holdouts = []
        if facts is not None:
            for (journey, state), candidates in facts.choices.items():
                made = self.tally.choices.get((journey, state), [])
                n = len(made)
                choices.append(ChoiceResult(
                    journey=journey, state=state, candidates=candidates, decisions=n,
                    with_choice=sum(len(d.eligible) > 1 for d in made),
                    picks=dict(sorted(Counter(d.picked for d in made).items())),
                    conversions=sum(d.converted for d in made),
                    adaptive_rate=_mean([d.expected for d in made]), fixed_rate=_mean([d.fixed for d in made]),
                    best_rate=_mean([d.best for d in made])))
            for journey, within in facts.holdouts.items():
                holdouts.append(self._holdout(journey, within))
        by_message = sends
        feedback_names = ("Email Delivered", "Email Bounced", "Email Opened", "Email Link Clicked", "Push Opened",
                          "Message Clicked", "Unsubscribed")
        return DemoResult(
            users=len(self.users), days=round((self.end - self.start) / DAY), seed=seed,
            start=datetime.fromtimestamp(self.start, UTC), end=datetime.fromtimestamp(self.end, UTC),
            warmup_days=WARMUP_DAYS, events=sum(self.events.values()), events_by_name=dict(sorted(self.events.items())),
            sessions=dict(sorted(self.sessions.items())), sends=sum(by_message.values()),
            sends_by_message=dict(sorted(by_message.items())), sends_by_channel=dict(sorted(channels.items())),
            feedback={n: self.events[n] for n in feedback_names if self.events[n]},
            orders=dict(sorted(self.orders.items())), revenue=round(self.revenue, 2),
            population=self._population(),
            groups={g: GroupResult(sends=s, engaged=e, conversions=c)
                    for g, (s, e, c) in sorted(self.tally.groups.items())},
            journeys=dict(sorted(self.tally.journeys.items())), choices=tuple(choices), holdouts=tuple(holdouts),
            traffic=self.traffic(), elapsed_seconds=round(elapsed, 2))

    def _population(self) -> dict[str, dict[str, int]]:
        groups: dict[str, dict[str, int]] = {}
        for user in self.users:
            stats = groups.setdefault("existing" if user.existing else "signups", {"users": 0, "buyers": 0,
                                                                                   "orders": 0})
            stats["users"] += 1
            ordered = sum(self.start <= at < self.end for at in user.orders)
            stats["orders"] += ordered
            stats["buyers"] += ordered > 0
        return dict(sorted(groups.items()))

    def _holdout(self, journey: str, within: float) -> HoldoutResult:
        counts = {False: [0, 0], True: [0, 0]}
        late = 0
        for user_id, (at, held) in self.tally.entrants.get(journey, {}).items():
            user = self._find(user_id)
            if user is None:
                continue
            if at + within > self.end:
                late += 1
                continue
            counts[held][0] += 1
            # the order that made them eligible is at `at`: count the ones after it
            counts[held][1] += any(at + 1 < t <= at + within for t in user.orders)
        return HoldoutResult(journey=journey, within_days=within / DAY, treated=counts[False][0],
                             treated_converted=counts[False][1], holdout=counts[True][0],
                             holdout_converted=counts[True][1], too_late=late)


class _WorkspaceFacts:
    """What the response model needs to know about a workspace's journeys and messages."""

    def __init__(self, compiled: CompiledWorkspace) -> None:
        messages = compiled.workspace.messages
        self.channels = {m: msg.channel for m, msg in messages.items()}
        self.subscriptions = {m: msg.subscription for m, msg in messages.items() if msg.subscription}
        self.choices: dict[tuple[str, str], tuple[str, ...]] = {}
        self.holdouts: dict[str, float] = {}
        self.actions: dict[str, str] = {}
        self.keys: dict[str, str | None] = {}
        for name, cj in compiled.journeys.items():
            journey = cj.journey
            self.keys[name] = journey.entry.key
            goal = journey.goal
            # a goal that is a rule (reactivation: the set-up finished) is reached by finishing the set-up
            self.actions[name] = "setup" if goal is not None and goal.on is None else "order"
            if journey.holdout > 0 and goal is not None:
                self.holdouts[name] = goal.within.total_seconds()
            for state_name, state in journey.states.items():
                if isinstance(state.send, Choose) and state.send.choose == "best":
                    self.choices[(name, state_name)] = tuple(state.send.from_)


def _parse(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 6) if values else 0.0


# --- the run ------------------------------------------------------------------------------------------------


class _Watched:
    """The demo's store, watched for when the engine next needs to run without an event.

    Every profile the runtime commits carries its `wake_at`; the earliest one says whether
    `Runtime.advance` has anything to do, so the run skips the calls that would find nothing due.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.wakes: dict[str, float] = {}
        self.heap: list[tuple[float, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def commit(self, batch: Batch) -> None:
        self.store.commit(batch)
        for user, profile in batch.profiles.items():
            at = profile.wake_at
            if at is None:
                self.wakes.pop(user, None)
            elif self.wakes.get(user) != at:
                self.wakes[user] = at
                heapq.heappush(self.heap, (at, user))
        for user in batch.deleted:
            self.wakes.pop(user, None)

    def next_wake(self) -> float:
        heap = self.heap
        while heap and self.wakes.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: that user's wake-up moved or went
        return heap[0][0] if heap else math.inf


def run_demo(compiled: CompiledWorkspace, store: Store | None = None, *, users: int = 10_000, days: int = 30,
             seed: int = 7, start: datetime = datetime(2026, 3, 2, tzinfo=UTC),
             progress: Callable[[float, str], None] | None = None,
             on_batch: Callable[[list[Event]], None] | None = None) -> DemoResult:
    """Let `users` synthetic people live `days` days through the workspace on the engine, on `store`.

    `store` should be empty (None: a MemoryStore): the people are u0, u1, ... and their events' ids
    are the same in every run with this seed, so a store that saw a run before drops them as duplicates.

    Events go to `Runtime.process` in time order, in batches of at most BATCH_MAX events within
    BATCH_WINDOW, each preceded by `Runtime.advance` when a committed profile has a wake-up due by
    then (the store is watched for them: `_Watched`); the sends that come out are answered by the
    population (see the module docstring). `progress(fraction, message)` is called as the days go by;
    `on_batch(events)` sees every batch before the engine does.
    """
    began = time.perf_counter()
    population = Population(compiled, users=users, days=days, seed=seed, start=start)
    target: Store = store if store is not None else MemoryStore()
    if isinstance(target, SqlStore):
        target.mark_simulated("journey demo")  # its outbox holds simulated sends: `serve` must never send them
    watched = _Watched(target)
    runtime = Runtime(Engine(compiled, seed=seed), watched,  # type: ignore[arg-type]
                      claim=1 if isinstance(target, MemoryStore) else 500)
    sends = Counter[str]()
    channels = Counter[str]()
    end = datetime.fromtimestamp(population.end, UTC)
    span = population.end - population.first
    reported = -1.0

    def observe(outcome: Outcome) -> None:
        for send in outcome.sends:
            sends[send.message] += 1
            channels[send.channel] += 1
        population.observe(outcome)

    for at, until in population.windows():
        population.clock(at)
        if watched.next_wake() <= at:
            observe(runtime.advance(datetime.fromtimestamp(at, UTC)))  # timers and deferred sends due by now
        batch = population.next_batch(until)
        if batch:
            if on_batch is not None:
                on_batch(batch)
            observe(runtime.process(batch))
        done = (until - population.first) / span
        if progress is not None and done - reported >= 0.01:
            reported = done
            day = (until - population.start) / DAY
            when = f"day {day:4.1f}" if day >= 0 else "replaying existing customers' orders"
            progress(done, f"{when}: {sum(population.events.values()):,} events, {sum(sends.values()):,} sends")
    population.clock(population.end)
    observe(runtime.advance(end))
    if progress is not None:
        progress(1.0, f"done: {sum(population.events.values()):,} events, {sum(sends.values()):,} sends")
    return population.result(seed=seed, elapsed=time.perf_counter() - began, sends=sends, channels=channels)
