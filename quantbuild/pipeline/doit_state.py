"""doit's state database (.quantbuild/doit.db), its failures turned into one-line errors.

The database only remembers what doit last ran; the store decides what is up to date. So a
state file that cannot be written (disk full, read-only folder) loses nothing built: the next
build re-checks each stage against the store. It is still an error the user must hear of.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

from quantbuild.errors import StoreError
from quantbuild.pipeline import failures

TASK = "doit.db"  # the failure's name among task failures (for the exit code)


def state_error(err: Exception, path: Path) -> StoreError:
    reason = getattr(err, "strerror", None) or str(err)
    return StoreError(
        f"cannot write doit's state ({reason}); free space or fix permissions there: every "
        "artifact built so far is kept, the next build re-checks each stage against the store",
        str(path),
    )


def prepare(path: Path) -> None:
    """Create the state folder and database now, so that a full disk or a read-only folder is
    one line before anything runs (doit would print a traceback). A damaged database is
    replaced, with a warning: it only remembers what ran last."""
    try:
        _create(path)
    except sqlite3.OperationalError as err:  # full, read-only, locked
        raise state_error(err, path) from None
    except sqlite3.DatabaseError as err:  # not a database (damaged, or another file)
        print(
            f"warning: {path}: not a doit state database ({err}); starting a new one (the "
            "store still holds every artifact)",
            file=sys.stderr,
        )
        try:
            path.unlink()
            _create(path)
        except (sqlite3.Error, OSError) as again:
            raise state_error(again, path) from None
    except OSError as err:
        raise state_error(err, path) from None


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    try:
        with db:  # the table doit creates: a no-op on an existing database
            db.execute(
                "create table if not exists doit (task_id text not null primary key, "
                "task_data json)"
            )
    finally:
        db.close()


class GuardedState:
    """doit's database backend with every call guarded: a failure (disk full, I/O error) is
    recorded and printed once as one line, and the database is used no further in this run;
    doit then treats every task as never run, which the store makes cheap."""

    def __init__(self, backend: Any, path: Path):
        self._backend = backend
        self._path = path
        self._failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def _call(self, method: str, *args: Any, default: Any = None) -> Any:
        if self._failed:
            return default
        try:
            return getattr(self._backend, method)(*args)
        except (sqlite3.Error, OSError) as err:
            self._failed = True
            error = state_error(err, self._path)
            failures.record(TASK, error)
            print(f"ERROR: {error}", file=sys.stderr)
            return default

    def get(self, task_id: str, dependency: str) -> Any:
        return self._call("get", task_id, dependency)

    def set(self, task_id: str, dependency: str, value: Any) -> None:
        self._call("set", task_id, dependency, value)

    def in_(self, task_id: str) -> bool:
        return bool(self._call("in_", task_id, default=False))

    def remove(self, task_id: str) -> None:
        self._call("remove", task_id)

    def remove_all(self) -> None:
        self._call("remove_all")

    def dump(self) -> None:
        self._call("dump")


def guard(dependencies: Any, path: Path) -> None:
    """Put `GuardedState` between doit's dependency manager and its database (doit binds the
    backend's methods when it creates the manager, so they are rebound here too)."""
    if isinstance(dependencies.backend, GuardedState):
        return
    state = GuardedState(dependencies.backend, path)
    dependencies.backend = state
    dependencies._set, dependencies._get, dependencies._in = state.set, state.get, state.in_
    dependencies.remove, dependencies.remove_all = state.remove, state.remove_all
