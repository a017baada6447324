"""Smoke tests of the benchmarks in examples/: each runs once with the smallest settings
and its outputs must exist and be well-formed.  No timing is asserted (CI machines are
shared and small); the real figures are in the examples' READMEs.

Needs the MPI image (ci/build-mpi-image.sh, which ci/test.sh runs) and the MPI venvs
(ci/install-mpi.sh); cma-bench pip-installs matplotlib into its own venv on first use.
"""

import csv
import os
import sys
from pathlib import Path

import pytest

from conftest import IMAGES, run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MPI_IMAGE = IMAGES / "mpi"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mpi_image():
    if not (MPI_IMAGE / "opt" / "ompi5" / "bin" / "python").exists():
        pytest.fail(f"MPI image {MPI_IMAGE} missing: build it as root with "
                    "bash ci/install-mpi.sh && bash ci/build-mpi-image.sh")
    return MPI_IMAGE


def bench(script, *args, timeout=120):
    # /usr/bin/env python3 would find the test venv first on PATH; any python3 will do,
    # the scripts re-exec themselves where they need to.
    r = run([sys.executable, EXAMPLES / script / "run", *args], timeout=timeout,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 0, f"{script} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_cma_bench_smoke(mpi_image, tmp_path):
    out = tmp_path / "out"
    r = bench("cma-bench", "--out", str(out), "--image", str(mpi_image),
              "--stacks", "ompi5,mpich5", "--sizes", "64K", "--reps", "1",
              "--iters", "2", "--trace-iters", "2", "--timeout", "30")
    cols, rows = read_csv(out / "results.csv")
    assert cols[:5] == ["stack", "mode", "bytes", "mb_per_s", "cma_calls"]
    got = {(row["stack"], row["mode"]) for row in rows}
    assert got == {(s, m) for s in ("ompi5", "mpich5") for m in ("host", "separate", "joined")}
    for row in rows:
        assert row["bytes"] == "65536"
        assert int(row["cma_calls"]) >= 0
        assert row["status"] in ("ok", "failed"), row
        if row["status"] == "ok":
            assert float(row["mb_per_s"]) > 0, row
        else:
            assert row["note"], f"failed without a reason: {row}"
        if row["mode"] == "joined":   # the point of --join: the ranks use CMA
            assert row["status"] == "ok" and int(row["cma_calls"]) > 0, row
    assert (out / "bandwidth.png").read_bytes()[:8] == PNG_MAGIC
    table = [l for l in r.stdout.splitlines() if l.startswith(("ompi5 ", "mpich5 "))]
    assert len(table) == 6, r.stdout


def test_launch_bench_smoke(mpi_image, tmp_path):
    out = tmp_path / "out"
    r = bench("launch-bench", "--out", str(out), "--image", str(mpi_image),
              "--no-charliecloud", "--reps", "1", "--ranks", "2", "--peers", "2",
              "--hold", "0.2")
    cols, rows = read_csv(out / "results.csv")
    assert cols == ["benchmark", "variant", "median_s", "min_s", "runs", "ratio", "of",
                    "target", "failed"]
    failed = [(row["benchmark"], row["variant"], row["failed"]) for row in rows if row["failed"]]
    assert not failed, failed
    benches = {row["benchmark"] for row in rows}
    assert benches == {"startup", "mpi-2 (ompi4)", "join-2"}, benches
    for row in rows:
        assert row["median_s"] or row["ratio"], row
        for key in ("median_s", "ratio"):
            if row[key]:
                float(row[key])
    assert "C:" not in "".join(row["variant"] for row in rows)
    for header in ("== startup", "== mpi-2 (ompi4)", "== join-2", "importtime"):
        assert header in r.stdout, r.stdout
