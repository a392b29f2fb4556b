"""``python -m processor`` is the ``drishtiksha`` command."""

from processor.cli import main

main()
