"""Comparison reports: MLflow runs → tidy pandas tables → figures, rankings and a claims table.

``growbench report --suite NAME`` reads the suite's runs (never trains), writes the tables as CSV
beside the report, and builds every figure and table from those files only (``build_report``).
"""
