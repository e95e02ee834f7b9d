"""The dashboard: the journeys drawn with live counts, the report, and a user lookup, served beside the API."""
