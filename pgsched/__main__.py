"""Entry point for ``python -m pgsched``."""

from pgsched.cli import main

main()
