# The two commands of the README.
.PHONY: demo test setup lint
setup:
	bash tools/setup_env.sh
demo: setup
	.venv/bin/python -m tools.tour
test: setup
	.venv/bin/python -m pytest
lint: setup
	.venv/bin/ruff check .
