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
    """Create the state folder and database now, so that a full disk, a read-only folder or a
    damaged file is one line before anything runs (doit would print a traceback)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path)
    except (sqlite3.Error, OSError) as err:
        raise state_error(err, path) from None
    try:
        with db:  # the same table doit creates: a no-op on an existing database
            db.execute(
                "create table if not exists doit (task_id text not null primary key, "
                "task_data json)"
            )
    except sqlite3.OperationalError as err:  # full, read-only, locked
        raise state_error(err, path) from None
    except sqlite3.DatabaseError as err:
        raise StoreError(
            f"not a doit state database ({err}); delete it: it only remembers what ran last, "
            "the next build re-checks each stage against the store",
            str(path),
        ) from None
    finally:
        db.close()


class GuardedState:
    """doit's database backend with `dump` (its one write, at the end of a run) guarded: a
    failure is recorded and printed as one line instead of ending in doit's traceback."""

    def __init__(self, backend: Any, path: Path):
        self._backend = backend
        self._path = path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def dump(self) -> None:
        try:
            self._backend.dump()
        except (sqlite3.Error, OSError) as err:
            error = state_error(err, self._path)
            failures.record(TASK, error)
            print(f"ERROR: {error}", file=sys.stderr)
