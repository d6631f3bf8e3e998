"""Where a study lives and how processes share it: storages, a lock per study, heartbeats.

`storage` is a database URL (`sqlite:///path.db`, `postgresql://user@host/db`, `mysql://...`) or a
Journal file on a shared filesystem (`journal:///path/study.log`), for clusters without a
database server. Any number of processes may open the same study; what must not interleave
between them (counting the budget and asking for trials) runs under `exclusive`, a lock held by
the database server (PostgreSQL, MySQL) or on a file beside the SQLite or Journal file.

A running trial's sweeper process beats a heartbeat; a trial whose process died (no beat for the
grace period) is failed by the next process that asks, so it never holds up the others. RDB
storages keep Optuna's own heartbeat; a Journal file, which has none, keeps the beat as a trial
system attribute. Optuna is imported only when a storage is opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
import time

JOURNAL = "journal:///"
BEAT_ATTR = "sweeper:heartbeat"  # unix seconds, on a Journal file's running trials
WORKER_ATTR = "sweeper:worker"  # [host, pid, process start time] of the process running a trial
# a trial counts against n_trials once asked, whatever became of it (WAITING ones are not asked)
SPENT = ("RUNNING", "COMPLETE", "PRUNED", "FAIL")


def shown(url: str) -> str:
    """The storage URL without its password, for logs and records."""
    if url.startswith(JOURNAL):
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


DATABASES = ("sqlite", "postgresql", "mysql")  # SQLAlchemy's names, with or without +driver


def problem_with(url: str) -> str | None:
    """What keeps `url` from holding a study, in a few words, or None: a scheme this sweeper
    does not open, a file that is a folder, not writable or not SQLite, a folder that does not
    exist, a database server that does not answer (5 s). Checked before anything is written."""
    import os
    from pathlib import Path

    scheme = url.partition("://")[0].partition("+")[0]
    if url.startswith(JOURNAL) or scheme == "sqlite":
        path = url[len(JOURNAL):] if url.startswith(JOURNAL) else url[len("sqlite:///"):]
        if scheme == "sqlite" and (not url.startswith("sqlite:///") or path in ("", ":memory:")):
            return "an in-memory database, which other processes and a resumed sweep can't reach"
        file = Path(path)
        if file.is_dir():
            return f"{file} is a folder, not a file"
        folder = file.parent
        while not folder.exists():  # the sweeper makes missing folders; the first one counts
            folder = folder.parent
        if not os.access(folder, os.W_OK) or (file.exists() and not os.access(file, os.W_OK)):
            return f"{file if file.exists() else folder} is not writable"
        if scheme == "sqlite" and file.is_file() and file.stat().st_size:
            with file.open("rb") as handle:
                if handle.read(16) != b"SQLite format 3\x00":
                    return f"{file} is not an SQLite database"
        return None
    if scheme not in DATABASES:
        return f"{scheme}:// is not a storage this sweeper opens"
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(
            url, connect_args={"connect_timeout": 5} if scheme != "sqlite" else {})
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as err:
        return f"its driver is not installed ({err.name}: pip install it)"
    except Exception as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        return f"the database does not answer ({reason[0][:200] if reason else type(err).__name__})"
    return None


def lock_file(url: str) -> str | None:
    """The file a lock is taken on for a storage that lives in one file; None for servers.
    (A Journal file's own `.lock` is Optuna's, taken for each write.)"""
    if url.startswith("sqlite:///"):
        return f"{url[len('sqlite:///'):]}.lock"
    if url.startswith(JOURNAL):
        return f"{url[len(JOURNAL):]}.sweeper.lock"
    return None


def open_storage(url: str, heartbeat_interval: int | None = None,
                 grace_period: int | None = None):
    """The storage at `url`; with a heartbeat interval, one where lost trials can be found."""
    import optuna

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = url[len(JOURNAL):]
        return optuna.storages.JournalStorage(
            JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if heartbeat_interval is None:
        return optuna.storages.RDBStorage(url)
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                      grace_period=grace_period)


@contextlib.contextmanager
def exclusive(url: str, name: str):
    """One process at a time per study, across machines (see the module's docstring)."""
    path = lock_file(url)
    if path is not None:
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if not url.startswith(("postgresql", "mysql")):
        yield  # in-memory SQLite and other stores: one process only
        return
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(f"optuna-sweeper:{name}".encode()).digest()[:8], "big",
                         signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    postgres = url.startswith("postgresql")
    lock = "SELECT pg_advisory_lock(:k)" if postgres else "SELECT GET_LOCK(:k, -1)"
    unlock = "SELECT pg_advisory_unlock(:k)" if postgres else "SELECT RELEASE_LOCK(:k)"
    with engine.connect() as connection:
        arg = {"k": key if postgres else str(key)}
        connection.execute(sqlalchemy.text(lock), arg)
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(unlock), arg)
    engine.dispose()


def spent(study) -> int:
    """Trials of the study that count against its budget."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=[TrialState[s] for s in SPENT]))


def beat(storage, trial_id: int) -> None:
    """One heartbeat for a running trial."""
    if hasattr(storage, "record_heartbeat"):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_system_attr(trial_id, BEAT_ATTR, time.time())


def this_process() -> list:
    """[host, pid, start time]: which process runs a trial, recorded when it is asked."""
    import os
    import socket

    import psutil

    return [socket.gethostname(), os.getpid(), psutil.Process().create_time()]


def claim(storage, trial_id: int) -> None:
    storage.set_trial_system_attr(trial_id, WORKER_ATTR, this_process())


def dead_here(worker) -> bool:
    """True when `worker` (WORKER_ATTR) was a process on this machine that has ended: its trial
    is lost now, without waiting for the grace period (a worker killed and started again)."""
    import psutil

    if not worker or worker[0] != this_process()[0]:
        return False  # another machine's: only its heartbeat can tell
    try:
        return psutil.Process(worker[1]).create_time() != worker[2]  # the pid, reused
    except psutil.NoSuchProcess:
        return True


def fail_lost_trials(study, grace_period: float) -> list[int]:
    """FAIL the study's running trials whose process stopped beating, or ended on this
    machine; their numbers."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    lost = []
    for trial in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        last = trial.system_attrs.get(BEAT_ATTR)
        stale = not hasattr(storage, "record_heartbeat") and last is not None \
            and time.time() - last > grace_period
        if stale or dead_here(trial.system_attrs.get(WORKER_ATTR)):
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            lost.append(trial.number)
    if hasattr(storage, "record_heartbeat"):
        before = {t.number for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING])}
        optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING])}
        lost += sorted(before - after)
    return sorted(lost)


class Heartbeat:
    """Beats for each trial every `interval` seconds until the block ends."""

    def __init__(self, storage, trial_ids: list[int], interval: float):
        self.storage, self.trial_ids, self.interval = storage, list(trial_ids), interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            for trial_id in list(self.trial_ids):
                beat(self.storage, trial_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
