"""Job functions and a runnable pipeline for the sharing tests (see pipeline.py)."""
