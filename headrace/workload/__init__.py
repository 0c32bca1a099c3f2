"""Workloads that look like production: a trace format, a generator, a replayer and its report (`headrace bench`)."""
