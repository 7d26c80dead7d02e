"""The `layerprop` command line."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    return 0
