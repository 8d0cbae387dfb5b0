"""Calibration data and what is calibrated on it: packaged text, token windows, decode
thresholds, and static (position-priority) schedules."""
