"""Analysis of finished runs: calibration, evaluation, reports (numpy only)."""
