"""Errors the models raise; messages are written for a radiologist or a PACS admin."""

from __future__ import annotations


class UnsuitableSeries(ValueError):
    """The series cannot become a volume this model can take (gaps, mixed geometry, wrong modality...)."""


class ModelUnavailable(LookupError):
    """No model of that name, or its files are missing or broken."""
