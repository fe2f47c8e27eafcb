"""Noise schedules and samplers over a `denoise(x, sigma)` callable."""
