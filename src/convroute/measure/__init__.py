"""Measuring on the GPU: the one timer and timestamp reader (timing), the workload a timed conv runs on
(workload), and the float64 reference with the relative errors and bounds results are judged by (reference)."""
