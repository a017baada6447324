"""Build-time steps; everything else is in pyproject.toml.

* The man pages ch-run(1) and ch-mpirun(1), generated from the option tables: written
  into build/man (not tracked) from this source tree by chrun.helptext (standard
  library only) and installed as data files into PREFIX/share/man/man1, where man finds
  them for a venv whose bin is on PATH.
* bin/ch-run (installed as ch-run and ch-mpirun) starts with a few lines of sh that exec
  Python without the site module (see the comment there); pip would rewrite a
  ``#!python`` line and drop its flags.  pip builds with the interpreter it installs for
  (venv, ``--user`` or system), so that is the interpreter the script should use when it
  is not in a venv: ``@PYTHON@`` becomes ``sys.executable`` here.  A wheel built
  elsewhere still works: the script then falls back to ``python3`` on PATH.
"""
import os
import sys

from setuptools import setup

try:
    from setuptools.command.build_scripts import build_scripts
except ImportError:  # setuptools < 69 has only the distutils one
    from distutils.command.build_scripts import build_scripts

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from chrun import helptext  # noqa: E402

pages = helptext.write_man_pages(os.path.join("build", "man"))
sys.path.remove(HERE)


class build_scripts_with_python(build_scripts):
    def copy_scripts(self):
        outfiles, updated = super().copy_scripts()
        for path in outfiles:
            with open(path, "rb") as f:
                text = f.read()
            if b"'@PYTHON@'" in text:
                with open(path, "wb") as f:
                    f.write(text.replace(b"'@PYTHON@'", b"'" + sys.executable.encode() + b"'"))
        return outfiles, updated


setup(data_files=[("share/man/man1", [os.path.relpath(p) for p in pages])],
      cmdclass={"build_scripts": build_scripts_with_python})
