"""`journey demo` (SPEC §7): a seeded synthetic population lives through a workspace on the engine.

  run.py          run_demo: the loop that hands the population's events to the engine, in time order
  population.py   Population: who the users are and what they do by themselves (sessions, carts, orders)
  answers.py      Responses: how they answer the engine's messages (feedback, clicks, conversions)
  results.py      DemoResult and its parts: what a run did, as plain data
  data.py         the CDNOW purchase log (CDNOW_master.txt.gz) that repeat purchases are drawn from
"""

from adapters.demo.results import DemoResult
from adapters.demo.run import run_demo

__all__ = ["DemoResult", "run_demo"]
