"""The slow reference model of SPEC §3-§4 the engine is held to, and the differential tests."""
