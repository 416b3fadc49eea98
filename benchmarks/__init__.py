"""One-command benchmarks (see README.md); a package so that mypy names benchmarks.loadgen one way only."""
