"""The CDNOW purchase log the demo draws repeat purchases from (see `population`).

CDNOW_master.txt.gz is the CDNOW master data set of Fader and Hardie (69,659 orders of the 23,570
customers who first bought at the online CD shop CDNOW in the first quarter of 1997, followed to the
end of June 1998; columns customer id, date, number of CDs, dollar value), byte for byte the
`CDNOW_master.txt` that the MIT-licensed `lifetimes` package (0.11.3, © 2015 Cameron Davidson-Pilon)
ships in `lifetimes/datasets/`, compressed with `gzip -9 -n` (sha256 of the text: eff6889e...a072ef).
Fader and Hardie publish it for research and teaching at brucehardie.com/datasets.
"""

from __future__ import annotations

import gzip
import itertools
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

CDNOW_FILE = Path(__file__).with_name("CDNOW_master.txt.gz")


@dataclass(frozen=True, slots=True)
class PurchaseLog:
    """What the demo takes from CDNOW: gaps between purchase days, order values, and who comes back."""

    gaps: tuple[int, ...]  # days between a customer's consecutive purchase days
    values: tuple[float, ...]  # order values, 1997 dollars
    again: tuple[float, ...]  # again[k-1]: share of customers with k purchase days who had another


@cache
def cdnow() -> PurchaseLog:
    """The CDNOW master log (Fader & Hardie), read once from the file beside this module."""
    text = gzip.decompress(CDNOW_FILE.read_bytes()).decode("ascii")
    days: dict[str, set[int]] = {}
    values: list[float] = []
    for line in text.splitlines()[1:]:
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
