"""The end-to-end run: the stage table of every profile, running it, the report (``python -m analysis.reproduce``)."""
