"""Docs that run: every ``$ command`` shown in the project's Markdown files, run as written.

What is run
    Every tracked ``*.md`` file of the repository (README.md, docs/*.md, examples/*/README.md,
    launch/README.md, and any file added later) is one test.  In its fenced code blocks
    (```` ``` ````), a line starting with ``$ `` is a command; the lines after it, up to the
    next command or the end of the block, are its output as shown.  A command continues on
    the following lines that start with ``> `` (as a terminal shows a here-document or a
    line ending in ``\\``).  Blocks without a ``$ `` line (synopses, the set-up commands
    ``bash ci/setup.sh``/``bash ci/test.sh``, which are the set-up itself) are not run.
    The commands of one file run in order, each in ``bash -c``, in one fresh directory per
    file that also holds links to the repository's top-level entries (so
    ``examples/cma-bench/run`` works as written); a command ``NAME=value`` (nothing else)
    sets ``$NAME`` for the commands after it in that file.

As whom
    As the plain user ``chrun-test`` (the user the docs' outputs show), unless the command
    ends in the comment ``# as root``.  Run as root, this test runs plain-user commands
    through ``runuser``; run as a plain user, it runs them as itself and skips files with a
    ``# as root`` command.  ``PATH`` starts with the ``bin`` of the venv under test.

Trailing comments that change how a command is checked (several: ``# as root; any order``)
    ``# as root``            run as root (see above).
    ``# any order``          the output lines may come in any order (MPI ranks).
    ``# not run in CI: WHY`` not run, output not checked: kept for what cannot run in CI
                             (a second machine, minutes of benchmark); the text says so
                             visibly, and there should be few.
    ``# exit N``             the exit status is N (default 0).
    Any other comment is just a shell comment.

Slurm
    A block with a Slurm command (``srun``, ``salloc``, ``sbatch``, ``squeue``, ``sinfo``,
    ``scontrol``) runs only with ``CHRUN_SLURM=1`` (``ci/test.sh`` brings up the two-node
    cluster of ``ci/slurm-up.sh`` and sets it); otherwise it is skipped.

How output is compared (stdout and stderr together, as a terminal shows them)
    - ``…`` stands for any text within a line; a line that is only ``…`` for any number of
      lines (none included).
    - A number of 4 or more digits (a PID, a namespace inode, a UID, a job ID) stands for
      any number; within one command's output, numbers shown equal must be equal and numbers
      shown different must differ (so "4 ranks, one container" is checked, not just shown).
    - Runs of blanks compare equal to any run of blanks; leading and trailing blanks are
      ignored; so are empty lines.
    - Slurm's messages about waiting for resources (``srun: Job N step creation temporarily
      disabled, retrying``, ``… queued and waiting for resources``, ``salloc: Job allocation N
      has been revoked``) are ignored: they depend on the machine's load, not on chrun.
    - The exit status must be 0 (or N with ``# exit N``), unless the shown output has an
      ``error`` in it.
    - While a background command (ending in ``&``) of the file is running, a command whose
      output does not match is retried for up to 30 s, as a user would wait for the job.

Images and MPI venvs: the docs name ``/var/tmp/chrun-images/{tiny,mpi}`` and
``/opt/chrun/{ompi5,mpich5}`` (what ``ci/setup.sh`` builds); ``$CHRUN_IMAGES`` and
``$CHRUN_MPI_VENVS`` (as in the other tests) replace those directories in commands and outputs.

Run it alone:
``CHRUN_LEAK_CHECK=0 /opt/chrun/venv/bin/python -m pytest tests/test_docs.py -v``
(as root: every file; add ``CHRUN_SLURM=1`` with ``ci/slurm-up.sh``'s cluster up).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent        # the venv under test (no resolve(): symlinks)
USER = "chrun-test"
DOC_IMAGES = "/var/tmp/chrun-images"
IMAGES = os.environ.get("CHRUN_IMAGES", DOC_IMAGES).rstrip("/")
DOC_MPI_VENVS = "/opt/chrun"
MPI_VENVS = os.environ.get("CHRUN_MPI_VENVS", DOC_MPI_VENVS).rstrip("/")
SLURM = os.environ.get("CHRUN_SLURM") == "1"
TIMEOUT = int(os.environ.get("CHRUN_DOCS_TIMEOUT", "300"))
RETRY_S = 30
ELLIPSIS = "…"
SLURM_RE = re.compile(r"(?<![\w/.-])(srun|salloc|sbatch|squeue|sinfo|scontrol)(?![\w.-])")
ASSIGN_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\S.*)?$")
NUMBER_RE = re.compile(r"(?<![\w.])\d{4,}(?!\w|\.\d)")
DIRECTIVES = ("as root", "any order", "not run in CI", "exit ")


# ---- reading the docs ----------------------------------------------------------------------

class Command:
    def __init__(self, path, line, text):
        self.path, self.line, self.text = path, line, text
        self.output = []          # shown output lines
        self.root = self.any_order = False
        self.skip = None          # reason, for "not run in CI"
        self.status = 0           # expected exit status ("exit N")
        self.slurm = False        # set per block
        # Directives: the trailing comment of the command's first line.
        first = text.split("\n", 1)[0]
        m = re.search(r"\s#\s*([^#]*)$", first)
        if m:
            items = [s.strip() for s in m.group(1).split(";")]
            if any(i.startswith(DIRECTIVES) for i in items):
                for i in items:
                    if i == "as root":
                        self.root = True
                    elif i == "any order":
                        self.any_order = True
                    elif i.startswith("not run in CI"):
                        self.skip = i
                    elif re.fullmatch(r"exit \d+", i):
                        self.status = int(i.split()[1])

    @property
    def where(self):
        return f"{self.path}:{self.line}"

    @property
    def background(self):
        return self.text.rstrip().endswith("&") and not self.text.rstrip().endswith("&&")


def tracked_docs():
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard",
                              "*.md"], capture_output=True, text=True, check=True).stdout
        names = sorted(set(out.split()))
    except (OSError, subprocess.CalledProcessError):   # a copy without .git (ci/sync-src.sh)
        names = sorted(str(p.relative_to(REPO)) for p in REPO.rglob("*.md")
                       if not any(part.startswith(".") or part in ("build", "venv")
                                  for part in p.relative_to(REPO).parts))
    return [n for n in names if (REPO / n).is_file()]


def parse(path: str, text: str):
    """The commands of one Markdown file, in order."""
    commands, block, in_block, start, indent = [], [], False, 0, 0
    for no, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if in_block:
                commands.extend(parse_block(path, start, block))
                block, in_block = [], False
            else:
                in_block, start = True, no
                indent = len(line) - len(line.lstrip())   # a block in a list item
            continue
        if in_block:
            cut = min(indent, len(line) - len(line.lstrip()))
            block.append(line[cut:])
    return commands


def parse_block(path, fence_line, lines):
    cmds, cur = [], None
    for i, line in enumerate(lines):
        no = fence_line + 1 + i
        if line.startswith("$ "):
            cur = Command(path, no, line[2:])
            cmds.append(cur)
        elif cur is not None and line.startswith("> ") and not cur.output:
            cur.text += "\n" + line[2:]
        elif line == ">" and cur is not None and not cur.output:
            cur.text += "\n"
        elif cur is not None:
            cur.output.append(line)
    slurm = any(SLURM_RE.search(c.text) for c in cmds)
    for c in cmds:
        c.slurm = slurm
    return cmds


# ---- comparing output ------------------------------------------------------------------------

def line_pattern(line: str):
    """(regex, names of its number captures) for one shown line."""
    parts, names, pos = [], [], 0
    tokens = re.compile(r"…|\s+|" + NUMBER_RE.pattern)
    for m in tokens.finditer(line):
        parts.append(re.escape(line[pos:m.start()]))
        tok = m.group(0)
        if tok == ELLIPSIS:
            parts.append(".*?")
        elif tok.isspace():
            parts.append(r"\s+")
        else:
            parts.append(r"(\d+)")
            names.append(tok)
        pos = m.end()
    parts.append(re.escape(line[pos:]))
    return re.compile("".join(parts)), names


#: What Slurm says about waiting for resources, which depends on the machine's load.
SLURM_NOISE = re.compile(
    r"^(srun|salloc|sbatch): (Job \d+ step creation temporarily disabled, retrying.*"
    r"|Step created for job \d+|Job allocation \d+ has been revoked\.?"
    r"|Pending job allocation \d+|[Jj]ob \d+ queued and waiting for resources"
    r"|[Jj]ob \d+ has been allocated resources)$")


def normalize(lines):
    return [ln.strip() for ln in lines if ln.strip() and not SLURM_NOISE.match(ln.strip())]


def bind(bindings, names, values):
    """``bindings`` extended with shown→actual numbers, or None if that breaks equality."""
    new = dict(bindings)
    for n, v in zip(names, values):
        if n in new:
            if new[n] != v:
                return None
        elif v in new.values():
            return None      # two numbers shown different, actually equal
        new[n] = v
    return new


def matches(shown, actual, any_order=False):
    """Whether ``actual`` lines fit the ``shown`` lines (see the module's docstring)."""
    shown, actual = normalize(shown), normalize(actual)
    gap = ELLIPSIS in shown
    pats = [line_pattern(s) for s in shown if s != ELLIPSIS]
    if any_order:
        if not gap and len(pats) != len(actual):
            return False

        def place(i, used, b):
            if i == len(pats):
                return True
            rx, names = pats[i]
            for j, a in enumerate(actual):
                if j in used:
                    continue
                m = rx.fullmatch(a)
                if m:
                    nb = bind(b, names, m.groups())
                    if nb is not None and place(i + 1, used | {j}, nb):
                        return True
            return False
        return place(0, frozenset(), {})

    items = [None if s == ELLIPSIS else line_pattern(s) for s in shown]

    def walk(i, j, b):
        if i == len(items):
            return j == len(actual)
        if items[i] is None:
            return any(walk(i + 1, k, b) for k in range(j, len(actual) + 1))
        if j == len(actual):
            return False
        rx, names = items[i]
        m = rx.fullmatch(actual[j])
        if not m:
            return False
        nb = bind(b, names, m.groups())
        return nb is not None and walk(i + 1, j + 1, nb)
    return walk(0, 0, {})


# ---- running ---------------------------------------------------------------------------------

def images(text: str) -> str:
    """The docs' paths, replaced by those of this test run."""
    if IMAGES != DOC_IMAGES:
        text = text.replace(DOC_IMAGES, IMAGES)
    if MPI_VENVS != DOC_MPI_VENVS:
        text = re.sub(re.escape(DOC_MPI_VENVS) + r"/(ompi5|mpich5)\b", MPI_VENVS + r"/\1", text)
    return text


class Session:
    """The commands of one file: a directory, variables, background jobs."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.vars = []            # "NAME='value'" lines, in order
        self.jobs = []            # Popen of background commands (own process groups)
        self.am_root = os.geteuid() == 0

    def env(self, root: bool):
        if root:
            home, user = "/root", "root"
        else:
            user = pwd.getpwuid(os.geteuid()).pw_name if not self.am_root else USER
            home = pwd.getpwnam(user).pw_dir
        path = f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env = {"PATH": path, "HOME": home, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8",
               "TERM": "dumb", "PYTHONDONTWRITEBYTECODE": "1"}
        for k, v in os.environ.items():
            if k.startswith("CHRUN_") or k == "SLURM_CONF":
                env[k] = v
        return env

    def argv(self, cmd: Command, script: str):
        prelude = "\n".join(self.vars)
        full = f"{prelude}\n{script}" if prelude else script
        if self.am_root and not cmd.root:
            env = self.env(False)
            return ["runuser", "-u", USER, "--", "env", "-i"] + \
                [f"{k}={v}" for k, v in env.items()] + ["bash", "-c", full], None
        return ["bash", "-c", full], self.env(cmd.root)

    def run(self, cmd: Command, script: str, timeout=TIMEOUT):
        argv, env = self.argv(cmd, script)
        p = subprocess.Popen(argv, cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(p)
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:   # a process of another group holds the pipe
                p.stdout.close()
                p.wait()
                out = b""
            return 124, out.decode(errors="replace") + f"\n[killed after {timeout} s]"
        return p.returncode, out.decode(errors="replace")

    def start(self, cmd: Command, script: str):
        script = script.rstrip()[:-1]     # without the "&": we keep the process ourselves
        argv, env = self.argv(cmd, script)
        log = open(self.dir / f".bg-{cmd.line}.log", "wb")
        with log:
            self.jobs.append(subprocess.Popen(argv, cwd=self.dir, env=env,
                                              stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT,
                                              start_new_session=True))

    def background_running(self):
        return any(j.poll() is None for j in self.jobs)

    def stop(self):
        """End the background jobs as a user would, with Ctrl-C (SIGINT): mpirun then ends
        its ranks and removes its shared-memory files; SIGTERM, SIGKILL if that fails."""
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            running = [j for j in self.jobs if j.poll() is None]
            for j in running:
                kill_group(j, sig)
            for j in running:
                try:
                    j.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    pass


def kill_group(p, sig=signal.SIGKILL):
    try:
        os.killpg(p.pid, sig)   # the group we created for it (start_new_session)
    except ProcessLookupError:
        pass


def check(session: Session, cmd: Command):
    """None if ``cmd`` ran as shown, else what went wrong."""
    text = images(cmd.text)
    shown = [images(s) for s in cmd.output]
    if cmd.background:
        if shown:
            return "a background command (&) must show no output"
        session.start(cmd, text)
        return None
    m = ASSIGN_RE.match(text.strip())
    deadline = time.monotonic() + RETRY_S
    while True:
        if m and "\n" not in text.strip():
            name = m.group(1)
            rc, out = session.run(cmd, f"{text}\nprintf %s \"${name}\"")
            ok = rc == 0 and (out != "" or not (m.group(2) or "").startswith("$(")) and not shown
            if ok:
                session.vars.append(f"{name}={shlex_quote(out)}")
                return None
            problem = f"assignment failed (exit {rc}): {out!r}"
        else:
            rc, out = session.run(cmd, text)
            fits = matches(shown, out.splitlines(), cmd.any_order)
            status_ok = rc == cmd.status or any("error" in s.lower() for s in shown)
            if fits and status_ok:
                return None
            problem = (f"exit status {rc}" if fits else "output differs") + \
                "\n--- shown:\n" + "\n".join(shown) + "\n--- got:\n" + out
        if not (session.background_running() and time.monotonic() < deadline):
            return problem
        time.sleep(1)


def shlex_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


# ---- the tests -------------------------------------------------------------------------------

DOCS = tracked_docs()


def test_docs_found():
    assert "README.md" in DOCS and any(d.startswith("docs/") for d in DOCS), DOCS


@pytest.mark.container
@pytest.mark.parametrize("doc", [d for d in DOCS if parse(d, (REPO / d).read_text())])
def test_doc_runs_as_written(doc):
    cmds = parse(doc, (REPO / doc).read_text())
    am_root = os.geteuid() == 0
    if not am_root and any(c.root and not c.skip for c in cmds):
        pytest.skip("has '# as root' commands: run as root")
    if am_root:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            pytest.fail(f"user {USER} missing: bash ci/make-test-user.sh")
    workdir = Path(tempfile.mkdtemp(prefix="docs-", dir="/var/tmp"))
    try:
        for entry in REPO.iterdir():
            if not entry.name.startswith("."):
                (workdir / entry.name).symlink_to(entry)
        if am_root:
            shutil.chown(workdir, USER, USER)
        session = Session(workdir)
        failures, ran, skipped = [], 0, []
        try:
            for c in cmds:
                if c.skip:
                    skipped.append(f"{c.where}: {c.skip}")
                    continue
                if c.slurm and not SLURM:
                    skipped.append(f"{c.where}: Slurm (CHRUN_SLURM=1 not set)")
                    continue
                problem = check(session, c)
                ran += not ASSIGN_RE.match(c.text.strip())
                if problem:
                    failures.append(f"{c.where}: $ {c.text}\n{problem}")
        finally:
            session.stop()
        if failures:
            pytest.fail("\n\n".join(failures), pytrace=False)
        if ran == 0:
            pytest.skip("; ".join(skipped))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---- the comparison itself (fast, no containers) ----------------------------------------------

@pytest.mark.parametrize("shown, actual, any_order, ok", [
    (["a 1 b"], ["a 1 b"], False, True),
    (["a 1 b"], ["a 2 b"], False, False),          # short numbers are exact
    (["pid 1234"], ["pid 77"], False, True),         # long ones are placeholders
    (["x 1234 y 1234"], ["x 5 y 6"], False, False),  # equal shown -> equal actual
    (["x 1234 y 4321"], ["x 5 y 5"], False, False),  # different shown -> different actual
    (["x 1234 y 4321"], ["x 5 y 6"], False, True),
    (["a …", "…", "z"], ["a anything", "1", "2", "z"], False, True),
    (["…"], [], False, True),
    (["a", "b"], ["b", "a"], False, False),
    (["a", "b"], ["b", "a"], True, True),
    (["r 1111 u:4000", "r 2222 u:4000"], ["r 7 u:9", "r 8 u:9"], True, True),
    (["r 1111 u:4000", "r 2222 u:4000"], ["r 7 u:9", "r 8 u:10"], True, False),
    (["a  b"], ["a\tb  "], False, True),
    (["a"], ["a", "b"], False, False),
])
def test_matches(shown, actual, any_order, ok):
    assert matches(shown, actual, any_order) is ok


def test_parse_directives_and_continuations():
    text = "\n".join([
        "```", "$ echo 1   # as root; any order", "1", "$ cat > f <<'EOF'", "> x", "> EOF",
        "$ srun true   # not run in CI: needs two machines", "```",
        "```", "$ IMG=/x", "```", "- item:", "  ```", "  $ echo a", "  a", "  ```"])
    c = parse("t.md", text)
    assert [x.text for x in c] == ["echo 1   # as root; any order", "cat > f <<'EOF'\nx\nEOF",
                                   "srun true   # not run in CI: needs two machines", "IMG=/x",
                                   "echo a"]
    assert c[0].root and c[0].any_order and c[0].output == ["1"] and c[0].slurm
    assert c[2].skip == "not run in CI: needs two machines"
    assert not c[3].slurm and c[3].line == 10
    assert (c[4].text, c[4].output) == ("echo a", ["a"])
