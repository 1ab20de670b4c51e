"""The `hwm` command line (`hwm fit`, `hwm study`, `hwm compare`); `hwm = "hwm.cli:main"`."""

from hwm.cli.main import main

__all__ = ["main"]
