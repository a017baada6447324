"""Unit tests of chrun.joinconf: --join count, tag, timeout and group key (pure functions)."""

import pytest

from chrun import joinconf as jc
from chrun.errors import EXIT_USAGE, UsageError

HOST = "node1"


def resolve(count=None, tag=None, timeout=None, env=None, uid=1000, ppid=4242, host=HOST):
    return jc.resolve(count, tag, timeout, env or {}, uid=uid, parent_pid=ppid, hostname=host)


# --- count ------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [("1", 1), ("2", 2), ("64", 64), ("007", 7),
                                       (str(2**31 - 1), 2**31 - 1)])
def test_count_option_exact(text, want):
    assert resolve(count=text).count == want
    assert resolve(count=text).count_from == "--join-ct"


@pytest.mark.parametrize("text", ["", "0", "-1", "+2", "a", "1a", "2(x3)", " 2", "2 ", "1.5",
                                  "0x10", "٣", str(2**31), str(2**64), "9" * 100, "2\n"])
def test_count_option_invalid(text):
    with pytest.raises(UsageError) as x:
        resolve(count=text)
    assert x.value.code == EXIT_USAGE
    assert "\n" not in x.value.message and "--join-ct" in x.value.message


@pytest.mark.parametrize("var", jc.COUNT_VARS)
@pytest.mark.parametrize("text,want", [("3", 3), ("2(x3)", 2), ("4junk", 4), ("5 ", 5),
                                       (" 6", 6)])
def test_count_variable_trailing_junk(var, text, want):
    cfg = resolve(env={var: text})
    assert (cfg.count, cfg.count_from) == (want, f"${var}")


@pytest.mark.parametrize("var", jc.COUNT_VARS)
@pytest.mark.parametrize("text", ["", "0", "-1", "a", "x2", "(x3)", str(2**31), "9" * 40])
def test_count_variable_invalid(var, text):
    with pytest.raises(UsageError) as x:
        resolve(env={var: text})
    assert x.value.code == EXIT_USAGE and f"${var}" in x.value.message
    assert "\n" not in x.value.message


def test_count_variable_order():
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "SLURM_STEP_TASKS_PER_NODE": "3",
           "SLURM_CPUS_ON_NODE": "4"}
    assert resolve(env=env).count == 2
    del env["OMPI_COMM_WORLD_LOCAL_SIZE"]
    assert resolve(env=env).count == 3
    del env["SLURM_STEP_TASKS_PER_NODE"]
    assert resolve(env=env).count == 4


def test_count_first_defined_wins_even_if_bad():
    # "first defined": a bad first variable is an error, not skipped.
    with pytest.raises(UsageError):
        resolve(env={"OMPI_COMM_WORLD_LOCAL_SIZE": "x", "SLURM_CPUS_ON_NODE": "4"})


def test_count_option_beats_variables():
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "SLURM_CPUS_ON_NODE": "4"}
    cfg = resolve(count="5", env=env)
    assert (cfg.count, cfg.count_from) == (5, "--join-ct")
    with pytest.raises(UsageError):   # a bad option is not rescued by good variables
        resolve(count="5x", env=env)


def test_count_missing():
    with pytest.raises(UsageError) as x:
        resolve()
    for v in jc.COUNT_VARS:
        assert v in x.value.message


@pytest.mark.parametrize("text,node,want", [
    ("3,1", "0", 3), ("3,1", "1", 1), ("2(x2),1", "0", 2), ("2(x2),1", "1", 2),
    ("2(x2),1", "2", 1), ("4", "0", 4), ("4", "3", 4), ("3,1", None, 3), ("3,1", " 1", 1),
    ("5(x3)", "2", 5)])
def test_slurm_tasks_per_node(text, node, want):
    env = {"SLURM_STEP_TASKS_PER_NODE": text}
    if node is not None:
        env["SLURM_NODEID"] = node
    assert resolve(env=env).count == want


def test_slurm_tasks_per_node_no_entry():
    with pytest.raises(UsageError) as x:
        resolve(env={"SLURM_STEP_TASKS_PER_NODE": "3,1", "SLURM_NODEID": "2"})
    assert "SLURM_NODEID" in x.value.message


@pytest.mark.parametrize("node", ["", "\u00b2", "\u0661", "1a", "-1", "9" * 30, "1" + "0" * 10])
@pytest.mark.parametrize("text", ["3,1", "4"])
def test_slurm_node_id_must_be_a_number(text, node):
    """ASCII digits only and bounded, even where one entry makes it unused."""
    with pytest.raises(UsageError) as x:
        resolve(env={"SLURM_STEP_TASKS_PER_NODE": text, "SLURM_NODEID": node})
    assert "$SLURM_NODEID" in x.value.message


@pytest.mark.parametrize("var", ["OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_CPUS_ON_NODE"])
@pytest.mark.parametrize("text", ["\u00b2", "\u0662x", "9" * 5000])
def test_count_variable_unicode_or_huge(var, text):
    with pytest.raises(UsageError) as x:
        resolve(env={var: text})
    assert f"${var}" in x.value.message


def test_env_number():
    assert jc.env_number("X", "12", 100) == 12
    assert jc.env_number("X", " 7\t", 100) == 7
    for bad in ("", "\u00b2", "1.0", "101", "9" * 400, "+1"):
        with pytest.raises(UsageError) as x:
            jc.env_number("X", bad, 100)
        assert "$X" in x.value.message


def test_expand_tasks_per_node():
    assert jc.expand_tasks_per_node("2(x2),1") == ["2", "2", "1"]
    assert jc.expand_tasks_per_node("3") == ["3"]
    assert len(jc.expand_tasks_per_node("1(x99999999999)")) == 1 << 16   # bounded


# --- tag ----------------------------------------------------------------------

def test_tag_defaults():
    assert (resolve(count="2").tag, resolve(count="2").tag_from) == ("4242", "parent PID")
    cfg = resolve(count="2", env={"SLURM_STEP_ID": "0"})
    assert (cfg.tag, cfg.tag_from) == ("0", "$SLURM_STEP_ID")
    cfg = resolve(count="2", tag="t", env={"SLURM_STEP_ID": "0"})
    assert (cfg.tag, cfg.tag_from) == ("t", "--join-tag")


@pytest.mark.parametrize("tag", ["a b", "x/y", "ünï", "-", "--", "0", "t" * 4096, "a;b$c"])
def test_tag_accepted(tag):
    assert resolve(count="2", tag=tag).tag == tag


@pytest.mark.parametrize("tag", ["", "a\nb", "\n", "a\tb", "\x7f", "t" * 4097, "é" * 2049])
def test_tag_rejected(tag):
    with pytest.raises(UsageError) as x:
        resolve(count="2", tag=tag)
    assert x.value.code == EXIT_USAGE and "\n" not in x.value.message


def test_tag_empty_variable_rejected():
    with pytest.raises(UsageError):
        resolve(count="2", env={"SLURM_STEP_ID": ""})


# --- timeout ------------------------------------------------------------------

def test_timeout():
    assert resolve(count="2").timeout == jc.DEFAULT_TIMEOUT == 30
    assert resolve(count="2", timeout=3.0).timeout == 3
    assert resolve(count="2", env={"CH_RUN_JOIN_TIMEOUT": "7.5"}).timeout == 7.5
    assert resolve(count="2", timeout=2.0, env={"CH_RUN_JOIN_TIMEOUT": "7"}).timeout == 2


@pytest.mark.parametrize("text", ["", "x", "0", "-1", "nan", "inf", "1e9", "1e3", "\u0661",
                                  "1_0", ".", "1.2.3", "9" * 400])
def test_timeout_variable_invalid(text):
    with pytest.raises(UsageError):
        resolve(count="2", env={"CH_RUN_JOIN_TIMEOUT": text})


# --- group key and socket name -----------------------------------------------

def _name(secret=b"k" * 64, **kw):
    cfg = resolve(count="2", **kw)
    return jc.socket_names(kw.get("uid", 1000), cfg.key, secret)[0]


def test_socket_name_is_abstract_and_bounded():
    n = _name(tag="t" * 4096)
    assert n.startswith(b"\0chrun-join/1000/") and len(n) < 108   # sun_path limit


def test_groups_apart():
    base = _name(tag="t")
    assert base == _name(tag="t")
    assert base != _name(tag="u")
    assert base != _name(tag="t", uid=1001)
    assert base != _name(tag="t", host="node2")
    assert base != _name(tag="t", env={"SLURM_JOB_ID": "12"})
    assert _name(tag="t", env={"SLURM_JOB_ID": "12"}) != _name(tag="t", env={"SLURM_JOB_ID": "13"})
    assert (_name(env={"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "0"})
            != _name(env={"SLURM_JOB_ID": "13", "SLURM_STEP_ID": "0"}))
    assert base != _name(tag="t", env={"SLURM_NODEID": "1"})


def test_key_fields_cannot_be_forged():
    # Fields are newline-separated and a tag cannot hold a newline; a variable that
    # does must not produce another group's key.
    a = resolve(count="2", tag="t", env={"SLURM_JOB_ID": "1", "SLURM_NODEID": "2"}).key
    assert a != resolve(count="2", tag="t", env={"SLURM_JOB_ID": "1\nnode=2"}).key


def test_names_depend_on_the_secret_and_share_nothing():
    """Another user without the key computes none of the names; one name seen in
    /proc/net/unix tells nothing about the group's other names."""
    key = resolve(count="2", tag="t").key
    mine = jc.socket_names(1000, key, b"a" * 64)
    public = jc.socket_names(1000, key, b"")
    other = jc.socket_names(1000, key, b"b" * 64)
    assert len(set(mine)) == len(mine) == jc.NAMES >= 16
    assert not set(mine) & set(public) and not set(mine) & set(other)
    digests = [n.rsplit(b"/", 1)[1] for n in mine]
    assert len({d[:8] for d in digests}) == len(digests)
