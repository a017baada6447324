"""--help, --usage, the man pages, and what the package installs.

The man pages and --help come from one table (chrun/args.py, chrun/helptext.py); these tests
run the installed commands and ``man`` on the installed pages, so a row without help text,
a page the wheel does not install, or a page ``man`` cannot find fails here.
"""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from chrun import args, helptext, joinconf
from chrun.core import join_config
from chrun.plan import Options
from chrun_launch import mpirun

BIN = Path(sys.executable).parent
VENV = BIN.parent
REPO = Path(__file__).resolve().parent.parent
PROGRAMS = ("ch-run", "ch-mpirun")
SECTIONS = ("NAME", "SYNOPSIS", "OPTIONS", "ENVIRONMENT", "EXIT STATUS", "EXAMPLES",
            "SEE ALSO")


def run(argv, **kw):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, **kw)


def env_path():
    return {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/"),
            "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "1000"}


def editable():
    from importlib.metadata import distribution
    url = distribution("chrun").read_text("direct_url.json") or ""
    return '"editable": true' in url.replace("'", '"')


def help_rows(text):
    """{label: text} of the option rows of --help output (continuation lines joined)."""
    rows, label = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-\S, --\S+|    --\S+)(?:\s{2,}(.*))?$", line)
        if m:
            label = m.group(1).strip()
            rows[label] = m.group(2) or ""
        elif label and line.startswith(" " * helptext.COLUMN) and line.strip():
            rows[label] += " " + line.strip()
        else:
            label = None
    return rows


def words(text):
    text = text.replace("\u2212", "-").replace("\u2010", "-").replace("\u2019", "'")
    return " ".join(text.split())


def man_text(program):
    """The installed page, found by man as a user would (PATH), rendered as plain text."""
    if editable():
        pytest.skip("chrun is installed editable (pip install -e): no man pages installed; "
                    "CI installs the wheel")
    if not shutil.which("man"):
        pytest.fail("man missing: bash ci/install-deps.sh (man-db)")
    where = run(["man", "-w", program], env=env_path())
    assert where.returncode == 0, where.stderr
    path = Path(where.stdout.strip())
    assert path == VENV / "share/man/man1" / f"{program}.1", \
        f"man found {path}, not this venv's page (is chrun installed non-editable?)"
    r = run(["man", "-l", path], env=env_path())
    assert r.returncode == 0, r.stderr
    return words(r.stdout)


@pytest.mark.parametrize("program", PROGRAMS)
def test_man_page_has_every_help_row_with_the_same_text(program):
    r = run([BIN / program, "--help"])
    assert r.returncode == 0, r.stderr
    rows = help_rows(r.stdout)
    assert len(rows) >= 6, r.stdout
    page = man_text(program)
    for label, text in rows.items():
        assert text, f"{program} --help: {label} has no help text"
        assert words(f"{label} {text}") in page, f"{label} {text!r} not in man {program}"
    for section in SECTIONS:
        assert f"\n{section}\n" in "\n" + run(["man", "-l", VENV / "share/man/man1" /
                                              f"{program}.1"], env=env_path()).stdout, section


def test_every_run_option_has_help_and_is_documented_everywhere():
    ch_run = help_rows(run([BIN / "ch-run", "--help"]).stdout)
    mpi_help = run([BIN / "ch-mpirun", "--help"]).stdout
    mpi_page = man_text("ch-mpirun")
    group = {flag for _, flag in mpirun.GROUP_OPTIONS}
    for o in args.RUN_OPTIONS + args.INFO_OPTIONS:
        label = helptext.option_label(o).strip()
        assert o.help, f"{o.long}: no help text in chrun/args.py"
        assert words(ch_run.get(label, "")) == words(o.help), label
        if o.long not in group:
            assert o.long in mpi_help, f"ch-mpirun --help does not mention {o.long}"
            assert o.long in mpi_page, f"man ch-mpirun does not mention {o.long}"


def test_mpirun_help_layout_rows_together():
    """No paragraph between option rows; the ch-run paragraph after them."""
    text = run([BIN / "ch-mpirun", "--help"]).stdout
    blocks = text.split("\n\n")
    with_rows = [i for i, b in enumerate(blocks) if help_rows(b)]
    assert len(with_rows) == 1, text
    passed = blocks.index(next(b for b in blocks if b.startswith("ch-run options")))
    assert passed > with_rows[0]
    assert all(line.startswith("  ") for line in blocks[with_rows[0]].splitlines()), text
    assert max(len(line) for line in text.splitlines()) <= helptext.WIDTH


@pytest.mark.parametrize("program, usage", [
    ("ch-run", "Usage: ch-run [OPTION...] NEWROOT CMD [ARG...]\n"),
    ("ch-mpirun", "Usage: LAUNCHER ... ch-mpirun [OPTION...] NEWROOT -- CMD [ARG...]\n")])
def test_usage(program, usage):
    r = run([BIN / program, "--usage"])
    assert (r.returncode, r.stdout, r.stderr) == (0, usage, "")


def test_mpirun_verbose_names_the_true_sources():
    """ch-mpirun fills in count and tag: -v says where they came from, not --join-ct/-tag."""
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "3", "PMIX_NAMESPACE": "prterun-x@1"}
    opts = mpirun.decide("env", Options(newroot="/x", command=("true",)), env)
    cfg = join_config(opts, {})
    assert (cfg.count, cfg.count_from) == (3, "$OMPI_COMM_WORLD_LOCAL_SIZE")
    assert (cfg.tag, cfg.tag_from) == ("ompi:prterun-x@1", "$PMIX_NAMESPACE")
    # ch-run's own options still say so
    plain = join_config(Options(newroot="/x", command=("true",), join_ct="2", join_tag="t"), {})
    assert (plain.count_from, plain.tag_from) == ("--join-ct", "--join-tag")
    assert joinconf.resolve("2", None, None, {}, 0, 1, "h").tag_from == "parent PID"


def test_roff_escapes():
    assert helptext.roff("a-b \\ .x\n.y\n'z") == "a\\-b \\e .x\n\\&.y\n\\&'z"


def test_wheel_installs_only_our_top_level_names(tmp_path):
    """Build the wheel as pip would: top level holds chrun, chrun_launch and the .data/.dist-info
    of chrun only; the man pages go to share/man/man1, ch-run to the scripts."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", "venv", ".venv"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "dist").glob("chrun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    version = wheel.name.split("-")[1]
    assert top == {"chrun", "chrun_launch", f"chrun-{version}.dist-info",
                   f"chrun-{version}.data"}, sorted(top)
    data = {n.split("/", 1)[1] for n in names if n.startswith(f"chrun-{version}.data/")}
    assert data == {"data/share/man/man1/ch-run.1", "data/share/man/man1/ch-mpirun.1",
                    "scripts/ch-run", "scripts/ch-mpirun"}, sorted(data)  # one bootstrap, two names
    meta = zipfile.ZipFile(wheel).read(f"chrun-{version}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta
    assert "Requires-Python: >=3.11" in meta
    assert sys.version_info >= (3, 11)


@pytest.mark.parametrize("program", PROGRAMS)
def test_man_finds_the_pages_linked_by_setup(program):
    """After ci/setup.sh (README's first command): /usr/local/bin/PROGRAM and
    /usr/local/share/man/man1/PROGRAM.1 link into the venv, and plain `man PROGRAM` finds ours
    (before any other ch-run page, e.g. Charliecloud's in /usr/share/man)."""
    link = Path("/usr/local/bin") / program
    if not link.exists() or link.resolve() != (BIN / program).resolve():
        pytest.skip(f"{link} is not this venv's (ci/setup.sh links /opt/chrun/venv)")
    if not (Path("/usr/local/share/man/man1") / f"{program}.1").is_symlink():
        pytest.skip("no man page link in /usr/local/share/man/man1: ci/setup.sh ran before "
                    "it made them (re-run it)")
    env = {**env_path(), "PATH": "/usr/local/bin:/usr/bin:/bin"}
    r = run(["man", "-w", program], env=env)
    assert r.returncode == 0, r.stderr
    found = Path(r.stdout.strip())    # man -w names the link's target
    assert found.resolve() == (VENV / "share/man/man1" / f"{program}.1").resolve(), found
