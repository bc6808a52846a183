"""Manifest builders for the public chest X-ray layouts users have on disk (one module per layout).

``build_manifest(layout, root, out)`` → ``BuildResult`` (rows, skipped label counts, notes);
``write_manifest_csv(frame, out)``. The label tables are documented in ``data_manifests/README.md``.
"""

from . import covid_qu_ex, covidx, folders, montgomery, shenzhen, tbx11k  # noqa: F401  (registration)
from .base import BUILDERS, DESCRIPTIONS, BuildContext, BuildResult, build_manifest, parse_label_map, write_manifest_csv

__all__ = ["BUILDERS", "DESCRIPTIONS", "BuildContext", "BuildResult", "build_manifest", "parse_label_map",
           "write_manifest_csv"]
