"""Calibration: activation statistics and the range policies computed from them."""
