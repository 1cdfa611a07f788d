"""Benches on suites of real layers, comparisons with peer engines, and the differential self-test."""
