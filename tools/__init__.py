"""Command-line tools: the tour (``python -m tools.tour``), set-up scripts, benchmarks."""
