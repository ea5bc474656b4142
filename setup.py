"""What pyproject.toml cannot say statically: dracd's version is the one line in
client/dracclient/__init__.py, and dracd requires exactly that dracclient (the
two are released together). Everything else is in pyproject.toml."""

import re
from pathlib import Path

from setuptools import setup

_INIT = Path(__file__).resolve().parent / "client" / "dracclient" / "__init__.py"
VERSION = re.search(r'^__version__ = "([^"]+)"$', _INIT.read_text(), re.MULTILINE).group(1)  # type: ignore[union-attr]

setup(
    version=VERSION,
    install_requires=[
        f"dracclient=={VERSION}",
        "berkeleydb>=18.1.2",
        "pyyaml>=6",
        "psutil>=5.9",
        "h11>=0.14",
    ],
)
