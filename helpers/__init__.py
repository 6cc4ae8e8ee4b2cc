"""Helpers for the notebooks reproducing "How Do Vision Transformers Work?" (Park & Kim, ICLR 2022)."""
from helpers.common import pick_device  # noqa: F401  (what every notebook calls first)
