"""Passes on a Dask cluster: the same chunks, computed on the workers that hold them.

A fit's pass has one shape: per chunk of images, statistics; across chunks, a sum in chunk
order. :class:`_ClusterData` runs that shape on a ``distributed.Client``:

- the chunks are grouped into blocks of consecutive chunks, about ``TASKS_PER_THREAD`` per
  thread of the cluster's workers; the first pass submits one task per block that reads its
  chunks from the images' file (every worker opens it with ``X.opener``), shifts them,
  computes their spectra and sums, and keeps all of it in the worker's memory: a future per
  block, held for the whole fit;
- every later pass ships the chunk function once (the parameters and the E-step's constants:
  kilobytes; the workers pass it on among themselves) and runs one task per block where the
  block lives, which works through its chunks in order and brings back each chunk's sums
  (about image-sized); the client adds them in chunk order, as the threads' results are added
  on one machine. Few tasks per pass keep the scheduler's work (about a millisecond a task)
  out of the way, whatever the chunk size.

So with the same chunks a fit on a cluster is the same fit, bit for bit: every chunk's numbers
are computed from the same values by the same code, and summed in the same order. Monte-Carlo
draws are made on the client, in chunk order, and sent with the tasks.

A worker that dies takes its blocks with it; Dask reads them again elsewhere from the file (a
block is a task's result, not scattered data), and the pass goes on. A lost scheduler or client
raises :class:`ClusterError`.

``distributed`` is imported only inside this module's functions, when a fit is given a
client: importing the module (``engine`` does, for :class:`ClusterError`) costs nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from facefinder_cli.engine import _fft as sfft
from facefinder_cli.engine.data import _Data
from facefinder_cli.engine.machine import _retain_freed_memory
from facefinder_cli.engine.model import NonFiniteError

__all__ = ["ClusterError", "connect"]


class ClusterError(RuntimeError):
    """The cluster could not be reached or was lost (scheduler, client, or workers dying one
    after another), or its workers could not read the images this machine reads."""


# --------------------------------------------------------------------------------------------
# On the workers
# --------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """A chunk of images as a worker holds it for a whole fit."""

    a: int
    b: int
    x: np.ndarray  # (n, H, W) shifted, in the fit's dtype
    xf: np.ndarray | None  # rfft2(x), or None when spectra are not cached
    sq: np.ndarray  # (n,) Σ_ij X_k² (shifted, float64)
    sum_x: np.ndarray  # (H, W) Σ_k X_k (shifted, float64)
    top: float  # max |X| (shifted)

    def spectra(self) -> np.ndarray:
        return self.xf if self.xf is not None else sfft.rfft2(self.x)

    def __sizeof__(self) -> int:
        # What Dask weighs a chunk by (dask.sizeof falls back to sys.getsizeof): without its
        # arrays, a chunk would look free to move, and the scheduler would move megabytes
        # of images between workers in every pass, and misjudge the workers' memory.
        arrays = (self.x, self.xf, self.sq, self.sum_x)
        return object.__sizeof__(self) + sum(a.nbytes for a in arrays if a is not None)


@dataclass
class _Block:
    """Consecutive chunks that one worker holds and works through in one task."""

    chunks: list[_Chunk]

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + sum(c.__sizeof__() for c in self.chunks)


def _load_block(
    opener: Callable,
    bounds: list[tuple[int, int]],
    offset: float,
    dtype: np.dtype,
    cache: bool,
    fingerprint: tuple | None = None,
) -> _Block:
    """Read the chunks ``bounds`` with a reader that ``opener()`` opens, as
    ``_Data._first_pass`` reads them; first, if given, check that the reader's
    ``fingerprint`` of these images is the client's."""
    _retain_freed_memory()  # in the worker's process, as a local fit does in its own
    first, last = bounds[0][0], bounds[-1][1] - 1
    try:
        stack = opener()
        try:
            if fingerprint is not None and stack.fingerprint(first, last + 1) != fingerprint:
                raise ClusterError(
                    f"a worker of the cluster reads other files than this machine for images "
                    f"{first} to {last} (a stale copy, another mount, or files changed since "
                    "the fit started): every worker must see the same files at the same path"
                )
            chunks = [_load_chunk(stack, a, b, offset, dtype, cache) for a, b in bounds]
        finally:
            close = getattr(stack, "close", None)
            if close is not None:
                close()
    except (NonFiniteError, ClusterError):
        raise
    except Exception as err:  # (the reader's own one-line errors name the file)
        raise ClusterError(
            f"a worker of the cluster could not read images {first} to {last}: {err} (every "
            "worker must see the same file at the same path)"
        ) from None
    return _Block(chunks)


def _load_chunk(stack, a: int, b: int, offset: float, dtype: np.dtype, cache: bool) -> _Chunk:
    x = np.subtract(stack[a:b], offset, dtype=np.float64)
    if not np.isfinite(x).all():
        k = int(np.argmin(np.isfinite(x).reshape(b - a, -1).all(1)))
        raise NonFiniteError(a + k, "NaN" if np.isnan(x[k]).any() else "infinite values")
    sq = np.einsum("kij,kij->k", x, x)
    sum_x, top = x.sum(axis=0), float(np.abs(x).max())
    x = x.astype(dtype, copy=False)
    return _Chunk(a, b, x, sfft.rfft2(x) if cache else None, sq, sum_x, top)


def _first_sums(block: _Block) -> list[tuple[np.ndarray, np.ndarray, float]]:
    return [(c.sq, c.sum_x, c.top) for c in block.chunks]


def _itself(fn: Callable) -> Callable:
    return fn


_CURRENT: contextvars.ContextVar[_Chunk] = contextvars.ContextVar("facefinder_chunk")


def _run(fn: Callable, block: _Block, extras: list[tuple]) -> list:
    """``fn(a, b, *extra)`` for every chunk of ``block`` in order, on a worker, with the data
    it closes over (a :class:`_Remote`) serving the chunk; the results in order."""
    _retain_freed_memory()
    out = []
    for chunk, extra in zip(block.chunks, extras):
        token = _CURRENT.set(chunk)
        try:
            out.append(fn(chunk.a, chunk.b, *extra))
        finally:
            _CURRENT.reset(token)
    return out


class _SquaresOfChunk:
    """``sq_x`` on a worker: ``sq_x[a:b]`` of the chunk being worked on."""

    def __getitem__(self, index: slice) -> np.ndarray:
        chunk = _CURRENT.get()
        assert (index.start, index.stop) == (chunk.a, chunk.b), "another chunk's sums"
        return chunk.sq


class _Remote:
    """What a chunk function that closes over a :class:`_ClusterData` finds on a worker: the
    geometry and the constants of the data, and the chunk it is given. The data pickles as
    this, so the images and the client never travel with a function."""

    sq_x = _SquaresOfChunk()

    def __init__(self, fields: dict) -> None:
        self.__dict__.update(fields)

    def chunk_images(self, a: int, b: int) -> np.ndarray:
        chunk = _CURRENT.get()
        assert (a, b) == (chunk.a, chunk.b), "another chunk's images"
        return chunk.x

    def chunk_data(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        chunk = _CURRENT.get()
        assert (a, b) == (chunk.a, chunk.b), "another chunk's images"
        return chunk.x, chunk.spectra()


#: Tasks per pass for each thread of the cluster's workers: enough to keep them all busy to
#: the end of a pass, few enough that the scheduler's work per task (about 1 ms) is noise.
TASKS_PER_THREAD = 4


def _threads(client) -> int:
    """The threads of the cluster's workers (at least 1)."""
    with _talking():
        workers = client.scheduler_info()["workers"].values()
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers))


def _blocks(bounds: list[tuple[int, int]], threads: int) -> list[list[tuple[int, int]]]:
    """The chunks grouped, in order, into about ``TASKS_PER_THREAD * threads`` blocks of
    consecutive chunks: one task per block in every pass. A chunk's numbers, and the order in
    which the client adds them, do not depend on the blocks."""
    n = len(bounds)
    per = max(1, -(-n // (TASKS_PER_THREAD * threads)))
    return [bounds[i : i + per] for i in range(0, n, per)]


#: Chunks whose first image the client reads itself, to check that the workers read the same.
SAME_IMAGES_CHECKED = 32

#: The attributes of the data that chunk functions may read on a worker.
_REMOTE_FIELDS = ("K", "H", "W", "h", "w", "Dh", "Dw", "dtype", "offset", "by_slices", "chunk")


# --------------------------------------------------------------------------------------------
# On the client
# --------------------------------------------------------------------------------------------


class _ClusterData(_Data):
    """:class:`_Data` whose chunks live on the workers of a Dask cluster (see the module's
    docstring). ``X`` is read on the client too (the start's sample of images), and must have
    an ``opener``: a picklable callable that opens the same images on a worker, e.g.
    :class:`~facefinder_cli.images.NpyReader`'s."""

    def __init__(self, X, face_shape, client, **options) -> None:
        opener = getattr(X, "opener", None)
        if not callable(opener):
            raise ValueError(
                "a fit on a cluster reads the images on the workers: give X as a reader of a "
                "file they can read (an NpyReader or a ZarrReader), not an array in memory"
            )
        self.client = client
        self.opener = opener
        check_workers(client)
        self._fit_id = f"facefinder-{uuid.uuid4().hex}"  # (unique among a cluster's clients)
        self._groups: list[list[tuple[int, int]]] = []
        self._blocks: list = []  # a future per block of chunks, held by a worker
        super().__init__(X, face_shape, **options)

    def _cache(self, cache_fft: bool | None, limit: int, per_image: int) -> int:
        # On the workers, whose memory is the cluster's: cached unless asked not to or no
        # memory at all is given for it.
        cache = cache_fft if cache_fft is not None else limit > 0
        self._cache_on_workers = bool(cache)
        return self.K if cache else 0

    def _read_all(self):
        options = (self.offset, self.dtype, self._cache_on_workers)
        fingerprint = getattr(self.X, "fingerprint", None)  # (of files the workers check)
        self._groups = _blocks(self.bounds(), _threads(self.client))
        self._blocks = [
            self.client.submit(
                _load_block,
                self.opener,
                group,
                *options,
                fingerprint(group[0][0], group[-1][1]) if fingerprint else None,
                key=f"{self._fit_id}-block-{group[0][0]}",
                pure=False,
            )
            for group in self._groups
        ]
        sums = [self.client.submit(_first_sums, block, pure=False) for block in self._blocks]
        for group, future in zip(self._groups, sums):
            for (a, b), (sq, part, top) in zip(group, _result(future, self.client)):
                self.sq_x[a:b] = sq
                yield a, b, (part, top)
        self._check_same_images()

    def _check_same_images(self, n: int = SAME_IMAGES_CHECKED) -> None:
        """Read the first image of up to ``n`` chunks here, and compare its sum of squares with
        the worker's, bit for bit: a worker that sees another file at the same path (a stale
        copy, another mount) would otherwise make the fit of other images than the names say."""
        bounds = self.bounds()
        for i in np.unique(np.linspace(0, len(bounds) - 1, min(n, len(bounds))).astype(int)):
            a = bounds[i][0]
            x = np.subtract(self.X[a : a + 1], self.offset, dtype=np.float64)
            if np.einsum("kij,kij->k", x, x)[0] != self.sq_x[a]:
                raise ClusterError(
                    f"the workers of the cluster read other values than this machine for "
                    f"image {a}: every worker must see the same file at the same path"
                )

    def __reduce__(self):
        return _Remote, ({name: getattr(self, name) for name in _REMOTE_FIELDS},)

    def chunk_data(self, a: int, b: int):
        raise RuntimeError("the chunks of a fit on a cluster are on its workers")

    chunk_images = chunk_data

    def local_chunk_data(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        # read here, as a worker reads it (``_Data._read``) and transforms it (``rfft2``, as
        # the first pass caches it): the same values as the worker's chunk, bit for bit
        x = self.local_chunk_images(a, b)
        return x, sfft.rfft2(x)

    def local_chunk_images(self, a: int, b: int) -> np.ndarray:
        return _Data._read(self, a, b, self.dtype)

    def map(self, fn: Callable, extra: Callable[[int, int], object] | None = None):
        """As :meth:`_Data.map`, on the workers: ``fn`` is sent once, runs where each block of
        chunks lives, and the chunks' results come back, and are yielded, in chunk order."""
        _check_connected(self.client)
        with _talking():  # a task's result, not scattered data: a lost copy is made again
            shipped = self.client.submit(_itself, fn, pure=False)
            # Each task goes where its block is (the scheduler would otherwise balance the
            # workers' queues by moving blocks of images); anywhere if those workers left.
            holders = self.client.who_has(self._blocks)
        futures = []
        for group, block in zip(self._groups, self._blocks):
            extras = [() if extra is None else tuple(extra(a, b)) for a, b in group]
            where = list(holders.get(block.key, ()))
            pin = {"workers": where, "allow_other_workers": True} if where else {}
            with _talking():
                futures.append((group, self.client.submit(_run, shipped, block, extras, **pin)))
        try:
            for group, future in futures:
                yield from ((a, b, r) for (a, b), r in zip(group, _result(future, self.client)))
        finally:
            for _, future in futures:
                future.release()
            shipped.release()

    def close(self) -> None:
        """Let the workers drop the chunks."""
        for future in self._blocks:
            future.release()
        self._blocks = []


@contextlib.contextmanager
def _talking():
    """Calls to the scheduler, whose loss is a :class:`ClusterError` (at once when the client
    knows it lost the scheduler, rather than after its connection timeout). A task submitted
    on futures that the lost scheduler cancelled (the blocks of images) is refused with
    Dask's ``FuturesCancelledError``: that too (found when a test failed under load)."""
    from concurrent.futures import CancelledError  # (Dask's cancelled errors derive from it)

    from distributed.comm.core import CommClosedError

    try:
        yield
    except CancelledError as err:
        raise ClusterError(f"lost the Dask cluster ({_cancelled_why(err)})") from None
    except (CommClosedError, OSError, TimeoutError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ClusterError(f"lost the Dask cluster ({why})") from None


def _cancelled_why(err: BaseException) -> str:
    """Why Dask cancelled a fit's futures, in a few words."""
    why = getattr(err, "reason", None)
    if "scheduler-connection-lost" in str(err) or why == "scheduler-connection-lost":
        return "the client lost the connection to the scheduler"
    return why or "its work was cancelled"


def _check_connected(client) -> None:
    if client.status != "running":
        raise ClusterError(f"lost the Dask cluster (the client is {client.status})")


#: Seconds between checks, while a task's result is awaited, that the cluster still has workers.
WORKERS_CHECK = 2.0


def _result(future, client=None):
    """A task's result; a lost scheduler or client as :class:`ClusterError`, and, with
    ``client``, a cluster left without workers for longer than Dask's connect timeout (Dask
    would wait for one forever)."""
    import asyncio  # here, not at the top: a fit without a cluster does not need it

    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    try:  # (what a lost scheduler also cancels with, in the distributed tested here)
        from distributed.client import FuturesCancelledError
    except ImportError:  # pragma: no cover - a distributed without it
        FuturesCancelledError = FutureCancelledError

    alone_since = None
    while True:
        try:
            return future.result(timeout=None if client is None else WORKERS_CHECK)
        except KilledWorker:
            raise ClusterError(
                "the workers of the Dask cluster died running the fit's tasks, one after "
                "another (out of memory? give them more memory or add workers; dtype float32 "
                "halves what they hold, and a memory limit of 0 drops their cached spectra)"
            ) from None
        except (FutureCancelledError, FuturesCancelledError) as err:
            raise ClusterError(f"lost the Dask cluster ({_cancelled_why(err)})") from None
        except (TimeoutError, asyncio.TimeoutError) as err:
            if client is None or future.status != "pending":
                why = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ClusterError(f"lost the Dask cluster ({why})") from None
            _check_connected(client)
            if client.scheduler_info()["workers"]:
                alone_since = None
                continue
            now, grace = time.monotonic(), _connect_timeout()
            alone_since = alone_since or now
            if now - alone_since > grace:
                raise ClusterError(
                    f"the Dask cluster has had no workers for {grace:g} s: lost all of them"
                ) from None
        except (CommClosedError, OSError) as err:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ClusterError(f"lost the Dask cluster ({why})") from None


def _connect_timeout() -> float:
    """Dask's ``distributed.comm.timeouts.connect``, in seconds."""
    import dask.config
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))


def quiet_logs() -> None:
    """Keep Dask's own logging (reconnection attempts, tracebacks of lost connections) off
    stderr: what went wrong reaches the caller as a :class:`ClusterError`."""
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def connect(address: str, *, timeout: float | None = None):
    """A ``distributed.Client`` of the cluster at ``address`` (``HOST:PORT``,
    ``tcp://HOST:PORT``, ``tls://...``), or of a new local cluster of N worker processes for
    ``local:N`` (one thread each, N at most this machine's cores; closed with the client by
    :func:`close_client`). Raises :class:`ClusterError` when no Dask scheduler answers at the
    address within ``timeout`` seconds (default: Dask's ``distributed.comm.timeouts.connect``),
    ``ValueError`` for a malformed address, and ``ImportError`` without ``distributed``."""
    from distributed import Client

    if timeout is None:
        timeout = _connect_timeout()
    n = local_workers(address)
    if n is not None:
        return _local_cluster(n)
    check_address(address)
    _probe(address, timeout)
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except Exception as err:  # refused, or gone since the probe: one line
        raise ClusterError(f"cannot reach a Dask scheduler at {address}: {err}") from None


def local_workers(address: str) -> int | None:
    """N for ``local:N`` (any case), None for another address; ``ValueError`` for a bad N."""
    if address[:6].lower() != "local:":
        return None
    n = address[6:]
    cores = os.cpu_count() or 1
    if not re.fullmatch(r"[0-9]+", n) or not 1 <= int(n) <= cores:
        raise ValueError(
            f"expected local:N with N from 1 to this machine's {cores} cores, got {address!r}"
        )
    return int(n)


def _local_cluster(n: int):
    from multiprocessing import resource_tracker

    import dask.config
    from distributed import Client, LocalCluster

    # While the cluster starts, SIGINT and SIGHUP are blocked in this thread, and held by a
    # handler that notes them: the threads that start the worker processes, created now,
    # inherit the mask, and so do the processes (a mask survives exec), which thus never see
    # a terminal's Ctrl-C to the whole process group until their preload (dask_setup) ignores
    # it; they would otherwise each print a traceback. A signal the kernel hands to one of
    # this process's other threads (NumPy's, which do not block it) reaches the handler: it
    # is raised again once the cluster is up and the usual handlers are back, and the fit
    # stops as it would have (with SIG_IGN here instead, such a signal was lost: found by
    # review, a Ctrl-C 1 to 2 s into a local:2 fit that then ran to its end). The resource
    # tracker of multiprocessing is started first: starting it unblocks SIGINT. No work
    # stealing: it moves tasks, and with them chunks of images, to idle workers at the end
    # of every pass.
    signals = (signal.SIGINT, signal.SIGHUP)
    main = threading.current_thread() is threading.main_thread()
    resource_tracker.ensure_running()
    held: list[int] = []
    handlers = (
        {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in signals}
        if main
        else {}
    )
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        with dask.config.set({"distributed.scheduler.work-stealing": False}):
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # (its HTTP server would else take port 8787, or warn)
                silence_logs=50,
                preload=[__name__],  # dask_setup, below, in every worker it starts
            )
            client = Client(cluster, set_as_default=False)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # (a pending one reaches `held`)
        for s, handler in handlers.items():
            signal.signal(s, handler)
    client._facefinder_cluster = cluster  # closed with the client (see close_client)
    try:
        for s in dict.fromkeys(held):  # once each, now with the usual handlers
            signal.raise_signal(s)
    except BaseException:
        close_client(client)
        raise
    return client


def dask_setup(worker) -> None:
    """Run by the workers of a ``local:N`` cluster as they start (Dask's preload): ignore
    SIGINT, which a terminal's Ctrl-C sends to the whole process group, in workers that the
    cluster starts again later too (see :func:`_local_cluster`)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _probe(address: str, timeout: float) -> None:
    """Check that a Dask scheduler answers at ``address``: a server of another kind can make
    ``distributed.Client`` wait forever (one that says nothing), fail noisily, or, for a
    Dask worker, fail half-built and print a traceback when it is collected. The connection
    takes the TLS settings of Dask's configuration (``distributed.comm.tls``), as the
    client does."""
    from distributed.comm import connect as comm_connect
    from distributed.security import Security

    async def identity() -> dict:
        args = Security().get_connection_args("client")
        comm = await comm_connect(address, timeout=timeout, **args)
        connected.append(True)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    outcome: list = []
    connected: list = []

    import asyncio

    def run() -> None:  # in a thread of its own: the caller may be running an event loop
        try:
            outcome.append(asyncio.run(asyncio.wait_for(identity(), timeout + 1)))
        except BaseException as err:  # (said below, in one line)
            outcome.append(err)

    thread = threading.Thread(target=run, name="facefinder-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    answer = outcome[0] if outcome else TimeoutError()
    if isinstance(answer, BaseException):
        from distributed.comm.core import CommClosedError

        garbage = connected or isinstance(answer, MemoryError)  # (in the handshake: no comm)
        quiet = (OSError, CommClosedError, TimeoutError, asyncio.TimeoutError)  # (3.10: not one)
        if garbage and not isinstance(answer, quiet):
            # bytes of another protocol read as Dask's frames: a length of exabytes, say
            raise ClusterError(
                f"{address} answers, but not in Dask's protocol: a server of another kind, not "
                "a Dask scheduler (give the scheduler's address)"
            )
        why = (str(answer).splitlines() or [""])[0]
        if not why or "handshake" in why:
            if _accepts(address, timeout):  # something listens there, and said nothing
                raise ClusterError(
                    f"{address} accepts connections but gave no Dask answer in {timeout:g} s: "
                    "a server of another kind (a web server, say), or a scheduler too busy "
                    "to answer (give the scheduler's address, or raise Dask's "
                    "distributed.comm.timeouts.connect)"
                )
            why = why or f"no answer in {timeout:g} s"
        raise ClusterError(f"no Dask scheduler answers at {address} ({why})")
    kind = answer.get("type") if isinstance(answer, dict) else None
    if kind != "Scheduler":
        what = f"a Dask {kind.lower()}" if isinstance(kind, str) else "a server of another kind"
        raise ClusterError(
            f"{address} is {what}, not a Dask scheduler (give the scheduler's address)"
        )


def _accepts(address: str, timeout: float) -> bool:
    """Whether a TCP connection to ``address`` (``tcp://`` or ``tls://``) can be opened: to
    tell a server that says nothing from no server at all."""
    import socket

    from distributed.comm import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return False
        with socket.create_connection(parse_host_port(location), timeout=min(timeout, 5.0)):
            return True
    except (OSError, ValueError, TypeError):
        return False


def wait_for_workers(client, timeout: float, waiting: Callable[[], None]) -> int:
    """The number of the cluster's workers, once there is at least one: calls ``waiting()``
    when there is none yet, and raises :class:`ClusterError` if none joins in ``timeout``
    seconds (a fit would wait for them forever)."""
    import asyncio

    with _talking():
        n = len(client.scheduler_info()["workers"])
    if n:
        return n
    waiting()
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, asyncio.TimeoutError):
        raise ClusterError(
            f"the Dask scheduler has no workers (none joined in {timeout:g} s)"
        ) from None
    with _talking():
        return len(client.scheduler_info()["workers"])


def check_workers(client) -> None:
    """Refuse a cluster whose workers cannot run this machine's facefinder: without it, they
    fail every task, and a fit would wait; with another version, they may compute other
    numbers than a local fit."""
    from importlib import metadata

    try:
        here = metadata.version("facefinder")
    except metadata.PackageNotFoundError:  # (run from a source tree: nothing to compare)
        return
    with _talking():
        there = client.run(metadata.version, "facefinder", on_error="return")
    for worker, version in sorted(there.items()):
        if isinstance(version, BaseException):
            raise ClusterError(
                f"the Dask worker {worker} does not have facefinder: install facefinder "
                f"{here} in the workers' environment too"
            )
        if version != here:
            raise ClusterError(
                f"the Dask worker {worker} has facefinder {version}, this machine {here}: "
                "install the same version on every worker"
            )


#: The protocols of scheduler addresses that :func:`connect` takes.
SCHEMES = ("tcp", "tls", "ws", "wss")


def check_address(address: str) -> None:
    """Refuse what is not ``local:N`` or ``[SCHEME://]HOST:PORT`` before anything connects (a
    malformed address fails late in ``distributed``, and noisily)."""
    if local_workers(address) is not None:
        return
    from distributed.comm.addressing import parse_address, parse_host_port

    why = None
    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location)
        if scheme not in SCHEMES:
            why = f"{scheme}:// is not one of {', '.join(s + '://' for s in SCHEMES)}"
        elif not host:
            why = "no host"
        elif not 1 <= int(port) <= 65535:
            why = f"port {port} is not from 1 to 65535"
    except (ValueError, TypeError) as err:
        why = str(err)
    if why is not None:
        raise ValueError(
            f"not a scheduler address: {address!r} ({why}); expected HOST:PORT, "
            "tcp://HOST:PORT or local:N"
        )


def close_client(client) -> None:
    """Close a client from :func:`connect` (and the local cluster it started)."""
    cluster = getattr(client, "_facefinder_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
