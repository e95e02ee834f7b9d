"""The demo's synthetic population (SPEC §7): who they are and what they do by themselves.

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

Repeat purchases. The CDNOW purchase log (`data`: 69,659 orders of 23,570 customers of an online CD
shop, 1997-98, a compressed file beside this module): after a customer's k-th order, another comes with the share of
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

Age. Every user has a trait `age`: 40% are 18-29, the rest 30-69 (uniform within each band; an
assumption, drawn from a generator of its own so the rest of the population is the same with or
without it). The response model makes push work better for the young and email for the others, which
is what `choose: best ... by: [young_adults]` is for.

Answers to messages: see `answers` (`Responses`). The run: see `run`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from adapters.demo.data import cdnow
from adapters.demo.results import Answered, DemoResult, GroupResult, TrafficResult
from journey_engine.events import Event

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
YOUNG_SHARE = 0.40  # of users aged 18-29; the others are 30-69
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
# events that are not the user on the site or in the app: no part of a session
OFF_SITE = frozenset({"Signed Up", "Subscribed", "Email Delivered", "Email Bounced", "Email Opened", "Unsubscribed"})

# heap item kinds
_EVENT, _SIGNUP, _SESSION, _REPEAT = 0, 1, 2, 3


# --- the population --------------------------------------------------------------------------------------


class _User:
    __slots__ = ("age", "app", "carts", "email", "epoch", "existing", "id", "locale", "name", "next_session", "orders",
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
        self.age = 40




class Population:
    """The synthetic users, as a stream of engine events in time order (see the module docstring).

    By itself it only generates (the statistics tests use that); `answers.Responses` takes the engine's
    outcomes and schedules the users' answers to its sends into the same stream.
    """

    def __init__(self, *, users: int = 10_000, days: int = 30, seed: int = 7,
                 start: datetime = datetime(2026, 3, 2, tzinfo=UTC)) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.answers = random.Random(seed + 1)  # whether and when users answer: drawn apart from their habits
        self._ages = random.Random(seed + 2)  # apart too: adding ages changed no other draw
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
                self.session(user, at, buy="repeat")
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

    def track(self, at: float, user: _User, name: str, properties: dict[str, Any] | None = None) -> None:
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
        ages = self._ages
        user.age = ages.randint(18, 29) if ages.random() < YOUNG_SHARE else ages.randint(30, 69)
        if not user.existing:
            user.test = rng.random() < TEST_ACCOUNTS
            user.step = 0
            user.stall_at = rng.choice((0, 1)) if rng.random() < STALLERS else 2
        return user

    def _traits(self, user: _User, created: float) -> dict[str, Any]:
        traits: dict[str, Any] = {"first_name": user.name, "timezone": user.zone.key,
                                  "created_at": datetime.fromtimestamp(round(created), UTC),
                                  "onboarding_step": ONBOARDING[user.step], "age": user.age}
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
        self.track(at + 1, user, "Signed Up", {"source": source})
        if user.sms:
            self.track(at + 2, user, "Subscribed", {"subscription": "sms_marketing"})
        self.sessions["organic"] += 1
        end = self.session(user, at + 3)
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
            self.track(at, user, "Order Completed",
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
        end = self.session(user, at)
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

    def session(self, user: _User, at: float, *, buy: str | None = None, first: str | None = None,
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
                self.track(t, user, "Feature Used", {"feature": rng.choice(FEATURES)})
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
                self.track(t, user, "Product Added", {"cartId": cart, "productId": f"p{product}",
                                                       "name": PRODUCTS[product], "price": price})
        if buy is None:
            return t
        t += self._gap()
        self.track(t, user, "Checkout Started", {"cartId": cart, "value": value})
        if buy == "checkout":
            return t
        t += self._gap()
        self._order(user, t, buy, cart, value)
        return t

    def _order(self, user: _User, at: float, source: str, cart: str, value: float) -> None:
        rng = self.rng
        self.orders[source] += 1
        self.revenue += value
        self.track(at, user, "Order Completed", {"orderId": f"o-{user.id}-{len(user.orders)}", "cartId": cart,
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
            self.track(at, user, name)

    def _local_time(self, user: _User, at: float) -> float:
        """A time on the same local day as `at`, at an hour drawn from the user's traffic curve."""
        rng = self.rng
        cum = self._hour_cum[user.shift + 2]
        hour = next(h for h, c in enumerate(cum) if c >= rng.random() * cum[-1])
        local = datetime.fromtimestamp(at, user.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight.timestamp() + (hour + rng.random()) * HOUR

    def awake(self, user: _User, at: float) -> float:
        """The first moment from `at` the user is around to read a message: night hours are skipped."""
        weights = self._hour_weights[user.shift + 2]
        while self.answers.random() > weights[datetime.fromtimestamp(at, user.zone).hour]:
            at += 20 * MINUTE
        return at

    def find(self, user_id: str) -> _User | None:
        """One of ours (a store that was not empty may hold other users)."""
        index = int(user_id[1:]) if user_id[1:].isdigit() else -1
        return self.users[index] if 0 <= index < len(self.users) and self.users[index].id == user_id else None

    # --- the result ---------------------------------------------------------------------------------------

    def result(self, *, seed: int, elapsed: float, sends: Counter[str], channels: Counter[str],
               answered: Answered | None = None) -> DemoResult:
        """The run's figures; `answered` is what the users' answers to the engine's sends came to."""
        choices, holdouts, tally_groups, journeys = answered or ((), (), {}, {})
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
                    for g, (s, e, c) in sorted(tally_groups.items())},
            journeys=dict(sorted(journeys.items())), choices=choices, holdouts=holdouts,
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
