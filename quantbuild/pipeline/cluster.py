"""Stages run on a Dask cluster: the client orchestrates, workers compute and publish.

With `--cluster ADDRESS` (or `cluster = ADDRESS` in doit.cfg), a stage that misses the store is
submitted to the cluster instead of computed here. A worker opens the same project (its files
at the same path: a shared checkout or network folder), computes the stage under the same key
and publishes it to the store, which the workers and the client must share (an S3 URL, or a
folder they all see); the client then reads the entry from the store and exports it. Recipes
that do not depend on each other run at once (`quantbuild build` runs doit with one thread per
worker thread). A worker that dies mid-stage loses nothing published: the scheduler runs the
stage again on another worker, and the store's atomic publish keeps a half-written entry out.

`local` or `local:N` starts a `distributed.LocalCluster` of N worker processes on this machine.
"""

from __future__ import annotations

import contextlib
import io
import threading
import uuid
from collections.abc import Callable, Hashable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from quantbuild.errors import QuantbuildError

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster


class ClusterError(QuantbuildError):
    """The Dask cluster cannot be reached or used."""

    exit_code = 6


# Retries of a stage whose worker died (the scheduler's own count of lost workers is separate).
RETRIES = 2


class Cluster:
    """A connection to a Dask scheduler, made on first use (`quantbuild build` asks it for
    its worker threads before starting: an unreachable scheduler fails before any work)."""

    def __init__(self, address: str):
        self.address = address
        self._client: Client | None = None
        self._local: LocalCluster | None = None  # started by us: `local[:N]`
        self._submitted: dict[Hashable, Future[Any]] = {}  # by `once`: see run()
        self._lock = threading.Lock()  # doit runs the client's tasks in threads

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client, self._local = _connect(self.address)
        return self._client

    @cached_property
    def threads(self) -> int:
        """Worker threads in the cluster when first asked: how many stages may run at once."""
        counts = self.client.nthreads()  # type: ignore[no-untyped-call]
        return max(int(sum(counts.values())), 1)

    def run(self, once: Hashable, name: str, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on a worker (retried elsewhere if that worker dies); its result.
        Calls with the same `once` (a stage and its key) share one task: two tasks of one key
        would meet at the store's lease, one holding a worker thread while it waits, which the
        other may need for its shards (a deadlock). `name` labels the task on the dashboard."""
        with self._lock:
            future = self._submitted.get(once)
            if future is None:
                future = self.client.submit(
                    function,
                    *args,
                    key=f"{name}-{uuid.uuid4().hex[:8]}",
                    retries=RETRIES,
                    pure=False,
                )
                self._submitted[once] = future
        return future.result()

    def close(self) -> None:
        """Disconnect (and stop the workers we started)."""
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
        if self._local is not None:
            self._local.close()
        self._client = self._local = None


def _connect(address: str) -> tuple[Client, LocalCluster | None]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError(
            "--cluster needs Dask: pip install 'quantbuild[cluster]' (dask[distributed])"
        ) from None
    if address == "local" or address.startswith("local:"):
        workers = address.partition(":")[2]
        if workers and not workers.isdigit():
            raise ClusterError(f"cluster {address!r}: write local or local:N (N workers)")
        with contextlib.redirect_stderr(io.StringIO()):  # port notices
            local = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=int(workers or 2),
                threads_per_worker=1,
                host="127.0.0.1",
                dashboard_address=None,
            )
            return Client(local), local  # type: ignore[no-untyped-call]
    try:
        return Client(address, timeout="10s"), None  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} ({reason}); start it (`dask "
            "scheduler`) or fix --cluster / the `cluster` setting"
        ) from None
