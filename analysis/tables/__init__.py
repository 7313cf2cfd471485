"""Comparison tables: metrics files of run folders -> rows pooled over seeds, statistics, Markdown and CSV (``python -m analysis.tables``).

Nothing here imports the run side (``analysis.reproduce``): both read ``analysis.layout``.
"""
