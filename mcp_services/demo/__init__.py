"""The first run: `make demo` shows the memory at work on a running fleet (see cli.py)."""
