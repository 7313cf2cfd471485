"""Analysis: position-prediction probe, pictures, comparison tables and the end-to-end run."""
