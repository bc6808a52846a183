"""Phantom chest X-rays: the project's embedded, deterministic default data set (see docs/phantom.md)."""

from .generate import MANIFEST_COLUMNS, PhantomSpec, generate_dataset, patient_id
from .lesions import LABELS
from .render import DEFAULT_LESION_CONTRAST, PhantomCase, render_case
from .scenarios import SCENARIOS, SEVERITIES, Severity
from .sites import SITE_TABLE, SiteStyle, site_styles

__all__ = ["generate_dataset", "PhantomSpec", "Severity", "SEVERITIES", "SCENARIOS", "render_case", "PhantomCase",
           "SiteStyle", "SITE_TABLE", "site_styles", "LABELS", "MANIFEST_COLUMNS", "DEFAULT_LESION_CONTRAST",
           "patient_id", "SCENARIOS"]
