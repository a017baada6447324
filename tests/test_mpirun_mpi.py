"""Run under an MPI launcher with pytest-mpi (``mpiexec -n 3 python -m pytest --with-mpi``):
what ch-mpirun's env path reads from the launcher agrees with MPI itself.

Driven by tests/test_mpirun.py::test_env_agrees_with_mpi_under_pytest_mpi (Open MPI 5 and
MPICH 5, whose venvs hold mpi4py and pytest-mpi); plain pytest skips these tests.
"""

import os

import pytest

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture(scope="module")
def comm():
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    yield world, local
    local.Free()


def found():
    from chrun_launch import launchers
    return launchers.detect(os.environ, os.getppid(), launchers.pmi_peer_pid)


def test_local_size_is_mpis(comm):
    _, local = comm
    assert found().local_size == local.Get_size()


def test_tag_equal_on_node_and_job_specific(comm):
    world, local = comm
    tags = local.allgather(found().tag)
    assert tags[0] and len(set(tags)) == 1, tags


def test_launcher_known_and_reinit_ok(comm):
    f = found()
    assert f.family in ("ompi", "hydra") and f.reinit_ok, f
