"""Measurement: GPU timing, a host reference, calibration, the routing cost model and benchmarks."""
