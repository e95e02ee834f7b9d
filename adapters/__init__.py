"""The outside world: one folder per port, one module per technology.

Adapters import the core (`journey_engine`); the core never imports adapters.
"""
