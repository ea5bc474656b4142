"""What pyproject.toml cannot say statically: the version is the one line in
client/dracclient/__init__.py, and dracd-logwatch requires exactly that dracclient."""

import re
from pathlib import Path

from setuptools import setup

_INIT = Path(__file__).resolve().parent.parent / "client" / "dracclient" / "__init__.py"
VERSION = re.search(r'^__version__ = "([^"]+)"$', _INIT.read_text(), re.MULTILINE).group(1)  # type: ignore[union-attr]

setup(version=VERSION, install_requires=[f"dracclient=={VERSION}", "pyyaml>=6"])
