"""Scheduled aggregate reports: ``build_report(store, out)`` writes a self-contained HTML report, results.json,
tables and figures into a new run directory and publishes it atomically (see docs/report.md)."""

from filtershift.report.build import ReportResult, build_report
from filtershift.report.config import SCHEMA, load_config

__all__ = ["SCHEMA", "ReportResult", "build_report", "load_config"]
