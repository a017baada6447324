"""Start-up of ch-run and ch-mpirun after bin/ch-run's prologue (see its comment).

bin/ch-run starts Python with ``-I -S`` (no site module) and runs this module's code
from its .pyc (compiling the script's own source at every start would cost more than
the rest), then :func:`main` makes imports cheap and calls the entry point:

* :class:`CompiledFirst`, on ``sys.meta_path`` before the path finder, loads modules
  of the standard library and of our packages from their .pyc: two file-system calls
  a module instead of ~6, and no directory listings;
* :class:`SiteOnDemand`, last on ``sys.meta_path``, does the skipped site processing
  once if a module is found nowhere else (click, for --help and usage errors; an
  editable install).

Per rank of a group this is ~100 file-system calls and a few milliseconds less than a
plain ``python script`` start (figures: examples/launch-bench/README.md).
"""

import sys


class CompiledFirst:
    """On sys.meta_path just before the path finder: load a module of the standard
    library or of our packages straight from its .pyc (compiled when Python or our
    package was installed).  Two file-system calls a module (open the .pyc, stat the
    .py it must match) instead of ~6 (the path finder stats the directory, the .py
    twice, opens the .pyc and fstats it twice), and no directory listings.  Anything
    unexpected (no .pyc, another Python's, hash-based, stale, an extension module)
    returns None: the path finder then does what it always does."""

    stdlib = ""        # e.g. /usr/lib/python3.11
    ours = ""          # the site-packages directory with chrun and launch
    packages = ("chrun", "chrun_launch")

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        parent, _, stem = name.rpartition(".")
        if path is not None:
            dirs = list(path)
        elif name in cls.packages:
            dirs = [cls.ours]
        else:
            dirs = [cls.stdlib] if cls.stdlib else []
        ours = path is None and name in cls.packages
        for d in dirs:
            if ours:      # a package: no module file to look for first
                spec = cls.load(name, f"{d}/{stem}", "__init__", True)
            else:
                spec = (cls.load(name, d, stem, False)
                        or cls.load(name, f"{d}/{stem}", "__init__", True))
            if spec is not None:
                return spec
        if path is None and cls.stdlib and not ours:
            return cls.extension(name)
        return None

    @classmethod
    def extension(cls, name):
        """An extension module of the standard library (e.g. _ctypes) from lib-dynload:
        one stat, instead of the path finder's stats and listing of that directory."""
        import os
        external = sys.modules["_frozen_importlib_external"]
        where = f"{cls.stdlib}/lib-dynload/{name}{external.EXTENSION_SUFFIXES[0]}"
        try:
            os.stat(where)
        except OSError:
            return None
        spec = sys.modules["_frozen_importlib"].ModuleSpec(
            name, external.ExtensionFileLoader(name, where), origin=where)
        spec.has_location = True
        return spec

    @staticmethod
    def load(name, where, stem, package):
        import os
        import marshal
        source = f"{where}/{stem}.py"
        cached = f"{where}/__pycache__/{stem}.{sys.implementation.cache_tag}.pyc"
        try:
            fd = os.open(cached, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if data[:4] != sys.modules["_frozen_importlib_external"].MAGIC_NUMBER \
                or data[4:8] != bytes(4):
            return None   # another Python's, or hash-based: the path finder decides
        try:
            st = os.stat(source)
        except OSError:
            return None
        if (data[8:12] != (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                or data[12:16] != (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")):
            return None   # stale
        spec = sys.modules["_frozen_importlib"].ModuleSpec(
            name, CodeLoader(marshal.loads(data[16:])), origin=source, is_package=package)
        spec.has_location = True
        spec.cached = cached
        if package:
            spec.submodule_search_locations.append(where)
        return spec


class CodeLoader:
    def __init__(self, code):
        self.code = code

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.code, module.__dict__)


class SiteOnDemand:
    """Last entry of sys.meta_path: a module found nowhere on the short path (click,
    for --help and usage errors; an editable install's package) makes us do the site
    processing we skipped, once, and look again."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        sys.meta_path.remove(cls)
        import site
        site.main()
        from importlib.machinery import PathFinder
        return PathFinder.find_spec(name, path if path is not None else sys.path)


def main(package_dir):
    """Install the finders, name the process, run ch-run's or ch-mpirun's main."""
    if sys.flags.no_site:
        import os
        if package_dir is not None:
            if package_dir not in sys.path:
                sys.path.append(package_dir)
            CompiledFirst.ours = package_dir
        CompiledFirst.stdlib = os.path.dirname(getattr(os, "__file__", "") or "")
        path_finder = sys.modules["_frozen_importlib_external"].PathFinder
        at = sys.meta_path.index(path_finder) if path_finder in sys.meta_path else 0
        sys.meta_path.insert(at, CompiledFirst)
        sys.meta_path.append(SiteOnDemand)
    name = sys.argv[0].rsplit("/", 1)[-1]
    if name.startswith("ch-mpirun"):
        from chrun_launch.mpirun import main as entry
    else:
        from chrun.main import main as entry
    from chrun.syscalls import set_process_name
    set_process_name(name)      # what ps and pgrep show: ch-run, not python3
    return entry()
