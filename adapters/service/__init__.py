"""The application that `journey serve`, `ingest` and `bench` run: an engine host (in this process or in
several), the Prometheus metrics, the views, the settings and the process tuning. Sources hand events to
a host (`host.EngineHost`); they never build one."""
