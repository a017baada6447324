"""Smoke tests of the benchmarks in examples/: each runs once with the smallest settings
and its outputs must exist and be well-formed.  No timing is asserted (CI machines are
shared and small); the real figures are in the examples' READMEs.

Needs the MPI image (ci/build-mpi-image.sh, which ci/test.sh runs) and the MPI venvs
(ci/install-mpi.sh); cma-bench pip-installs matplotlib into its own venv on first use and
needs the image's /opt/cma-bench binaries (ci/build-cma-bench.sh).
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


CMA_COLUMNS = ["stack", "mode", "metric", "bytes", "value", "cma_calls", "status", "reps", "note"]
CMA_MODES = ("host", "host-nocma", "incont", "separate", "join", "chmpirun")


def check_cma_rows(rows, stacks, modes, metrics, sizes):
    """Structure only: one row per stack, mode, metric and size; values where ok; a reason
    where not; the CMA call counts. No speed is asserted."""
    got = sorted((r["stack"], r["mode"], r["metric"], int(r["bytes"])) for r in rows)
    assert got == sorted((s, m, t, b) for s in stacks for m in modes for t in metrics
                         for b in sizes)
    for row in rows:
        assert row["status"] in ("ok", "failed", "hung"), row
        if row["status"] == "ok":
            assert float(row["value"]) > 0 and int(row["reps"]) >= 1, row
            assert int(row["cma_calls"]) >= 0, row
            assert "CMA calls for" in row["note"], row      # the strace run's counts
        else:
            assert row["value"] == "" and row["note"], f"failed without a reason: {row}"
            assert "last size done" in row["note"], row
            assert "killed after" in row["note"] if row["status"] == "hung" else True, row


def by_key(rows):
    return {(r["stack"], r["mode"], r["metric"], int(r["bytes"])): r for r in rows}


def test_cma_bench_smoke(mpi_image, tmp_path):
    """Both PyPI stacks in all six modes, tiny sizes, one timed run."""
    out = tmp_path / "out"
    r = bench("cma-bench", "--out", str(out), "--image", str(mpi_image),
              "--stacks", "ompi5,mpich5", "--sizes", "1,64K", "--reps", "1",
              "--scale", "0.02", "--timeout", "40", timeout=900)
    cols, rows = read_csv(out / "results.csv")
    assert cols == CMA_COLUMNS
    check_cma_rows(rows, ("ompi5", "mpich5"), CMA_MODES, ("latency_us", "bw_mb_s"), (1, 65536))
    rows_by = by_key(rows)
    for stack in ("ompi5", "mpich5"):
        for metric in ("latency_us", "bw_mb_s"):
            # 64 KiB goes through CMA wherever the ranks share a user namespace ...
            for mode in ("host", "incont", "join", "chmpirun"):
                row = rows_by[stack, mode, metric, 65536]
                assert row["status"] == "ok" and int(row["cma_calls"]) > 0, row
            # ... and never with the stack's own switch turned off (named in the note)
            row = rows_by[stack, "host-nocma", metric, 65536]
            assert row["status"] == "ok" and int(row["cma_calls"]) == 0, row
            assert "CMA off: " in row["note"], row
            # separate containers: no CMA call succeeds across sibling user namespaces
            row = rows_by[stack, "separate", metric, 65536]
            assert row["status"] != "ok" or int(row["cma_calls"]) == 0, row
    assert (out / "cma-bench.png").read_bytes()[:8] == PNG_MAGIC
    verdict = (out / "verdict.txt").read_text().splitlines()
    assert [l.split(":")[0] for l in verdict] == ["ompi5", "mpich5"], verdict
    assert all("bw with CMA / without (host / host-nocma), 64 KiB: median" in l
               for l in verdict), verdict
    table = [l for l in r.stdout.splitlines() if l.startswith(("ompi5 ", "mpich5 "))]
    assert len(table) == 12, r.stdout


def test_cma_bench_debian_stacks(mpi_image, tmp_path):
    """Debian's Open MPI 4.1 and MPICH 4.0 in separate and joined containers: a run that
    hangs is killed after --timeout and reported with the last size done."""
    out = tmp_path / "out"
    bench("cma-bench", "--out", str(out), "--image", str(mpi_image),
          "--stacks", "ompi4,mpich4", "--modes", "separate,chmpirun", "--metrics", "bw",
          "--sizes", "1,64K", "--reps", "1", "--scale", "0.02", "--timeout", "15",
          timeout=600)
    cols, rows = read_csv(out / "results.csv")
    assert cols == CMA_COLUMNS
    check_cma_rows(rows, ("ompi4", "mpich4"), ("separate", "chmpirun"), ("bw_mb_s",), (1, 65536))
    rows_by = by_key(rows)
    for stack in ("ompi4", "mpich4"):
        row = rows_by[stack, "chmpirun", "bw_mb_s", 65536]
        assert row["status"] == "ok" and int(row["cma_calls"]) > 0, row
        row = rows_by[stack, "separate", "bw_mb_s", 65536]
        if row["status"] != "ok":   # the known workaround is named
            assert "workaround: " in row["note"], row
    assert (out / "cma-bench.png").read_bytes()[:8] == PNG_MAGIC


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
    # per-rank strace counts (tests/test_cost.py checks the budgets themselves)
    cols, rows = read_csv(out / "rankcost.csv")
    assert cols == ["runtime", "role", "peers", "fs_calls", "nss_lookups", "image_refs"]
    assert sorted((row["runtime"], row["role"]) for row in rows) == [("ours", "creator"),
                                                                    ("ours", "joiner")], rows
    assert all(int(row["fs_calls"]) > 0 for row in rows), rows
