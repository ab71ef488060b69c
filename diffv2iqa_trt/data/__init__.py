"""Test and training data made at run time from what installed packages ship (nothing is downloaded)."""
