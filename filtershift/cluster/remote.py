"""A scheduler elsewhere: reach it within a time limit, read a scheduler file, connect a client, wait for workers.

``distributed.Client(timeout=...)`` bounds the TCP connect but not the handshake: a port that accepts and stays
silent would hang it forever, so every connection is probed first (:func:`probe`). Messages show addresses
without user info or query strings (:mod:`filtershift.credentials`).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from filtershift import credentials
from filtershift.errors import FiltershiftError, reason

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_WORKER_TIMEOUT = 30.0


def redact(address: str) -> str:
    """``address`` without user info (``user:secret@``) or query string, safe to print or log.

    Parameters
    ----------
    address : str
        A scheduler or dashboard address.

    Returns
    -------
    str
        The address as messages show it.
    """
    return credentials.url(address, query=True)


def _scrubbed(exc: BaseException) -> str:
    """An exception's text for a message, without credentials of the addresses in it."""
    return credentials.scrub(reason(exc))


def resolve_timeout(value, env: str, default: float) -> float:
    """``value`` seconds, else the environment variable ``env``, else ``default``; a positive number."""
    if value is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError as exc:
            raise FiltershiftError(f"{env}={raw!r} is not a number of seconds") from exc
    value = float(value)
    if value <= 0:
        raise FiltershiftError(f"timeout must be positive seconds, got {value:g}")
    return value


async def _identify(address: str, limit: float) -> dict:
    from distributed.comm import connect
    from distributed.security import Security

    comm = await connect(address, timeout=limit, **Security().get_connection_args("client"))
    try:
        await comm.write({"op": "identity"})
        return await comm.read()
    finally:
        comm.abort()


def probe(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT, *, source: str = "argument") -> dict:
    """Ask ``address`` who it is within ``timeout`` seconds; raise unless a dask scheduler answers.

    Parameters
    ----------
    address : str
        ``tcp://HOST:PORT`` (or another distributed protocol).
    timeout : float, default 5
        Seconds for the connection and the answer together.
    source : str, default "argument"
        The rule that chose the address, named in messages.

    Returns
    -------
    dict
        The scheduler's identity.

    Raises
    ------
    filtershift.errors.FiltershiftError
        If nothing answers in time, the address is malformed, or what answers is not a scheduler.
    """
    shown = redact(address)
    remedy = ("Remedy: start the scheduler (deploy/local-cluster.sh start, or `dask scheduler`), check host, port "
              "and firewall, or compute locally with --scheduler local (unset DASK_SCHEDULER_ADDRESS if it is set); "
              "FILTERSHIFT_CONNECT_TIMEOUT raises the limit.")
    try:
        answer = asyncio.run(asyncio.wait_for(_identify(address, timeout), timeout))
    except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
        why = ("no answer: nothing listens there, or it does not speak the dask protocol"
               if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timed out" in str(exc)
               else f"connection failed: {_scrubbed(exc)}")
        raise FiltershiftError(f"cannot reach a dask scheduler at {shown} (from {source}) within {timeout:g} s "
                               f"({why}). {remedy}") from None
    except (ValueError, TypeError) as exc:
        raise FiltershiftError(f"dask scheduler address {shown} (from {source}) is malformed ({_scrubbed(exc)}): "
                               "expected tcp://HOST:PORT") from None
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        kind = answer.get("type") if isinstance(answer, dict) else type(answer).__name__
        raise FiltershiftError(f"{shown} (from {source}) answered but is not a dask scheduler ({kind}): "
                               "give the scheduler's address (default port 8786), not a worker's or dashboard's")
    return answer


def read_scheduler_file(path, *, source: str = "argument") -> str:
    """The address in a scheduler file written by ``dask scheduler --scheduler-file``.

    Parameters
    ----------
    path : str or os.PathLike
        The scheduler file.
    source : str, default "argument"
        The rule that chose the file, named in messages.

    Returns
    -------
    str
        The scheduler's address.

    Raises
    ------
    filtershift.errors.FiltershiftError
        If the file is missing or is not a scheduler file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FiltershiftError(f"scheduler {path!r} (from {source}) is neither threads/processes/synchronous/local, "
                               "an address tcp://HOST:PORT, nor an existing scheduler file: start the cluster "
                               "(deploy/local-cluster.sh start writes one) or fix the path")
    try:
        address = json.loads(p.read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FiltershiftError(f"scheduler file {p} is not a dask scheduler file ({_scrubbed(exc)}): "
                               "it must be JSON with an 'address' key, as written by dask scheduler "
                               "--scheduler-file") from None
    return str(address)


def connect(address: str, *, connect_timeout: float, worker_timeout: float, min_workers: int = 1,
            source: str = "argument"):
    """A ``distributed.Client`` on ``address``, after a bounded probe, with at least ``min_workers`` workers.

    Parameters
    ----------
    address : str
        The scheduler's address.
    connect_timeout : float
        Seconds to reach the scheduler.
    worker_timeout : float
        Seconds to wait for ``min_workers`` workers.
    min_workers : int, default 1
        Workers the scheduler must have (0: do not wait).
    source : str, default "argument"
        The rule that chose the address, named in messages.

    Returns
    -------
    distributed.Client
        A client not set as the default; the caller closes it.

    Raises
    ------
    filtershift.errors.FiltershiftError
        If the scheduler is unreachable or has too few workers in time.
    """
    from distributed import Client

    probe(address, connect_timeout, source=source)
    try:
        client = Client(address, timeout=connect_timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise FiltershiftError(f"cannot connect a client to the dask scheduler at {redact(address)} "
                               f"({_scrubbed(exc)}): check that the scheduler is still running") from None
    if min_workers > 0:
        try:
            client.wait_for_workers(min_workers, timeout=worker_timeout)
        except (TimeoutError, asyncio.TimeoutError):
            n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            client.close()
            raise FiltershiftError(f"the dask scheduler at {redact(address)} has {n} worker(s) after "
                                   f"{worker_timeout:g} s, {min_workers} needed: start workers "
                                   f"(dask worker {redact(address)}) or raise FILTERSHIFT_WORKER_TIMEOUT") from None
    return client
