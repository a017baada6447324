"""Who is in a ``--join`` peer group: the count and the tag (pure functions).

Defaults follow ch-run.rst exactly.  The count comes from ``--join-ct``, else
the first defined of ``OMPI_COMM_WORLD_LOCAL_SIZE``,
``SLURM_STEP_TASKS_PER_NODE``, ``SLURM_CPUS_ON_NODE``.  The tag comes from
``--join-tag``, else ``SLURM_STEP_ID``, else the parent's PID.

Values on the command line must be exact; values from variables may carry
trailing junk after their leading digits (``2(x3)`` is 2).  Slurm writes
``SLURM_STEP_TASKS_PER_NODE`` per node (``3,1`` or ``2(x2),1``): each node
takes its own entry, picked by ``SLURM_NODEID``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import List, Mapping, Optional

from .errors import UsageError
from .plan import record

COUNT_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_CPUS_ON_NODE")
TAG_VAR = "SLURM_STEP_ID"
#: A count above this is certainly a mistake (and would overflow C ints).
COUNT_MAX = 2**31 - 1
DEFAULT_TIMEOUT = 30.0
TIMEOUT_VAR = "CH_RUN_JOIN_TIMEOUT"


JoinConfig = record(
    "JoinConfig", ("count", "tag", "count_from", "tag_from", "timeout", "key"),
    """A peer group: ``count`` peers (int), ``tag`` (str), where each came from
    (``count_from``, ``tag_from``), the ``timeout`` in seconds, and the ``key`` that makes
    the group unique on this node (user, job, host, tag).""")


def _check_count(value: int, source: str, text: str) -> int:
    if value < 1:
        raise UsageError(f"invalid peer count from {source}: {text!r}: must be at least 1")
    if value > COUNT_MAX:
        raise UsageError(f"invalid peer count from {source}: {text!r}: too large")
    return value


# No re or hashlib here: every peer of a group imports this module, and those two
# imports would cost more than joining (64 peers on 2 cores pay it 32 times each).

def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def env_number(name: str, text: str, maximum: int) -> int:
    """An exact number from variable ``name``: ASCII digits only, at most ``maximum``."""
    text = text.strip(" \t")
    if not _digits(text):
        raise UsageError(f"invalid ${name}: {text!r}: not a non-negative integer")
    if len(text) > len(str(maximum)) or int(text) > maximum:
        raise UsageError(f"invalid ${name}: {text!r}: larger than {maximum}")
    return int(text)


def leading_digits(text: str) -> str:
    """``' 12(x3)'`` → ``'12'``: the digits after leading white space."""
    text = text.lstrip()
    n = 0
    while n < len(text) and "0" <= text[n] <= "9":
        n += 1
    return text[:n]


def count_from_option(text: str) -> int:
    if not _digits(text):
        raise UsageError(f"invalid --join-ct: {text!r}: not a positive integer")
    return _check_count(int(text), "--join-ct", text)


def count_from_variable(name: str, text: str) -> int:
    digits = leading_digits(text)
    if not digits:
        raise UsageError(f"invalid peer count from ${name}: {text!r}: not a positive integer")
    if len(digits.lstrip("0")) > len(str(COUNT_MAX)):   # no int() of a huge string
        raise UsageError(f"invalid peer count from ${name}: {text!r}: too large")
    return _check_count(int(digits), f"${name}", text)


def expand_tasks_per_node(text: str) -> List[str]:
    """``2(x2),1`` → ``['2', '2', '1']`` (each entry as text, junk kept)."""
    out: List[str] = []
    for item in text.split(","):
        count, sep, times = item.strip().partition("(x")
        if sep and _digits(count) and times.endswith(")") and _digits(times[:-1]):
            out.extend([count] * min(int(times[:-1]), 1 << 16))
        else:
            out.append(item)
    return out


def count_from_slurm_tasks(text: str, env: Mapping[str, str]) -> int:
    name = "SLURM_STEP_TASKS_PER_NODE"
    entries = expand_tasks_per_node(text)
    node = env.get("SLURM_NODEID")
    if node is not None:
        i = env_number("SLURM_NODEID", node, COUNT_MAX)
        if len(entries) > 1:
            if i >= len(entries):
                raise UsageError(f"${name}={text!r} has no entry for SLURM_NODEID={node}")
            return count_from_variable(name, entries[i])
    return count_from_variable(name, entries[0] if entries else text)


def resolve_count(option: Optional[str], env: Mapping[str, str]) -> tuple:
    """(count, where it came from)."""
    if option is not None:
        return count_from_option(option), "--join-ct"
    for name in COUNT_VARS:
        if name in env:
            if name == "SLURM_STEP_TASKS_PER_NODE":
                return count_from_slurm_tasks(env[name], env), f"${name}"
            return count_from_variable(name, env[name]), f"${name}"
    raise UsageError("--join: can't find peer count: use --join-ct or set one of "
                     + ", ".join("$" + v for v in COUNT_VARS))


def check_tag(tag: str, source: str) -> str:
    if tag == "":
        raise UsageError(f"invalid join tag from {source}: empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in tag):
        raise UsageError(f"invalid join tag from {source}: {tag!r}: contains control characters")
    if len(tag.encode(errors="surrogateescape")) > 4096:
        raise UsageError(f"invalid join tag from {source}: longer than 4096 bytes")
    return tag


def resolve_tag(option: Optional[str], env: Mapping[str, str], parent_pid: int) -> tuple:
    """(tag, where it came from)."""
    if option is not None:
        return check_tag(option, "--join-tag"), "--join-tag"
    if TAG_VAR in env:
        return check_tag(env[TAG_VAR], f"${TAG_VAR}"), f"${TAG_VAR}"
    return str(parent_pid), "parent PID"


def resolve_timeout(option: Optional[float], env: Mapping[str, str]) -> float:
    if option is not None:
        value, source = option, "--join-timeout"
    elif TIMEOUT_VAR in env:
        source = f"${TIMEOUT_VAR}"
        text = env[TIMEOUT_VAR].strip(" \t")
        whole, _, frac = text.partition(".")
        # ASCII decimals only: float() would take '1e9', 'inf', '\u0661' or '1_0'.
        if not (_digits(whole) or (whole == "" and frac)) or (frac and not _digits(frac)) \
                or len(whole) > 6:
            raise UsageError(f"invalid {source}: {env[TIMEOUT_VAR]!r}: "
                             f"not a number of seconds (digits and one '.')")
        value = float(text)
    else:
        return DEFAULT_TIMEOUT
    if not (0 < value <= 86400):
        raise UsageError(f"invalid {source}: {value}: must be in (0, 86400] seconds")
    return value


def group_key(uid: int, tag: str, env: Mapping[str, str], hostname: str) -> str:
    """What keeps groups apart: same tag, different user / job / node never meet."""
    parts = [f"uid={uid}", f"host={hostname}",
             f"job={env.get('SLURM_JOB_ID', '')}", f"node={env.get('SLURM_NODEID', '')}",
             f"tag={tag}"]
    return "\n".join(parts)


def _sha256(data: bytes):
    """SHA-256 from CPython's built-in module: hashlib would load OpenSSL first."""
    try:
        from _sha256 import sha256  # CPython <= 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython >= 3.12
        except ImportError:
            from hashlib import sha256
    return sha256(data)


#: Meeting names per group: squatting all of them costs another user this many sockets,
#: and only with the names in hand (they come from a key it cannot read: chrun.joinkey).
NAMES = 16


def socket_names(uid: int, key: str, secret: bytes, count: int = NAMES) -> list:
    """The group's abstract Unix socket names, in the order peers try them.

    Each is a SHA-256 of the per-user ``secret`` (:mod:`chrun.joinkey`), the group
    ``key`` and its index, cut to 160 bits, so neither another name of the group nor
    the name of another group follows from a name seen in ``/proc/net/unix``.  With
    an empty secret (no usable key) the names depend on public facts only.
    """
    base = secret + b"\0" + key.encode(errors="surrogateescape") + b"\0"
    return [f"\0chrun-join/{uid}/{_sha256(base + str(i).encode()).hexdigest()[:40]}".encode()
            for i in range(count)]


def resolve(count_opt: Optional[str], tag_opt: Optional[str], timeout_opt: Optional[float],
            env: Mapping[str, str], uid: int, parent_pid: int, hostname: str) -> JoinConfig:
    count, count_from = resolve_count(count_opt, env)
    tag, tag_from = resolve_tag(tag_opt, env, parent_pid)
    timeout = resolve_timeout(timeout_opt, env)
    return JoinConfig(count=count, tag=tag, count_from=count_from, tag_from=tag_from,
                      timeout=timeout, key=group_key(uid, tag, env, hostname))
