"""Test scenarios on the lab (hostile traffic, soak, start/stop cycles, counting traffic, a
recording relay), shared by the integration tests and the scripts that run them longer.
Imported as `scenarios` (tests/ is on the path, as for `fuzz`)."""
