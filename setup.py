"""Build-time step: the man pages ch-run(1) and ch-mpirun(1), generated from the option tables.

Everything else is in pyproject.toml.  The pages are written into build/man (not tracked)
from this source tree by chrun.helptext (standard library only) and installed as data files
into PREFIX/share/man/man1, where man finds them for a venv whose bin is on PATH.
"""
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from chrun import helptext  # noqa: E402

pages = helptext.write_man_pages(os.path.join("build", "man"))
sys.path.remove(HERE)
setup(data_files=[("share/man/man1", [os.path.relpath(p) for p in pages])])
