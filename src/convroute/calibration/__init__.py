"""What routing reads about a device: its calibration profile and cost model, the grid, the denylist and the
self-test's findings."""
