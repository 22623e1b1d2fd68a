"""Offline analysis of recorded files: analysis to a folder, report.json, figures, campaign tables, Dask."""
