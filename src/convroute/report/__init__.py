"""Reports for people: the one table formatter, latency percentiles, the one progress bar, plots."""
