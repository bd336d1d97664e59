"""PyInstaller entry point of the ``mini-connector`` binary: ``agent.cli:main``."""

import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
