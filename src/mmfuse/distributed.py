"""Multi-process (DDP) jobs under Hydra: the job's process starts one process per rank and supervises them.

Lightning's own launcher for ``strategy=ddp`` re-runs ``sys.argv`` once per extra rank. Under a Hydra
multirun that argv is the whole sweep (``-m fusion=a,b ...``), so every extra rank starts a second
sweep with its own timestamped directory; and the job's process, being rank 0, dies with any rank.

Here, when the composed trainer would start rank processes itself (a strategy launched by Lightning's
subprocess launcher, more than one process, no cluster environment that starts them), the Hydra job's
process becomes a supervisor, much like ``torchrun``:

- it starts ``world`` processes ``python -m mmfuse.distributed`` with ``RANK`` / ``LOCAL_RANK`` /
  ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set (Lightning then joins them instead of
  launching), and hands each the job's composed config (task and ``hydra`` nodes, pickled on stdin),
  so the ranks run exactly this job, in this job's directory, with nothing re-composed;
- a training job whose directory already holds it, completed, is skipped here, before any rank starts
  (as ``mmfuse.train`` skips it in one process);
- rank 0 writes ``results.json``, checkpoints and logs; every rank logs to ``<job name>_rank<r>.log``
  in the job directory, and only rank 0 also to the console (the other ranks' stdout and stderr go to
  their log file), each line once;
- the job's ``started_at``, ``finished_at`` and ``wall_time_s`` in ``results.json`` are the
  supervisor's: from before the ranks start until they have all exited;
  the ranks' clock starts then too (``MMFUSE_JOB_STARTED``), so that the time rank 0 prints is the job's;
- SIGTERM to the supervisor (a scheduler's stop) is passed on to the ranks: rank 0 records the job as
  interrupted, and the job exits with 143 and the command that resumes it, as a one-process run does;
- a rank stopped by SIGINT or SIGTERM (exit code 130 / 143: ``kill`` to one rank) stops the job the same way:
  the signal is passed on to the other ranks and the job ends interrupted, not failed;
- if a rank fails, the others are killed and the job's ``results.json`` says failed, naming the rank;
  the supervisor itself never joins the process group, so a sweep survives any rank failure, and the
  next job starts from a clean environment.

Multi-node jobs need a launcher that starts the processes on every node (``hydra/launcher=slurm``,
``torchrun``); Lightning then detects the cluster and no supervisor is used.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mmfuse.data.atomic import atomic_write_json
from mmfuse.errors import MMFuseError, RunInterrupted
from mmfuse.joblog import lightning_logs_to_root, tee_stdout_to_job_log
from mmfuse.results import (
    FILENAME,
    JOB_STARTED_ENV,
    CorruptRecord,
    failure_fields,
    mark_failed,
    read_results,
    utc_now,
    utc_time,
)

log = logging.getLogger(__name__)

WORKER_ENV = "MMFUSE_RANK_PROCESS"  # set in the rank processes this module starts
ERROR_FD_ENV = "MMFUSE_RANK_ERROR_FD"  # a rank writes its user error (one line) to this file descriptor
RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
EXIT_USER_ERROR = 2


@dataclass(frozen=True)
class RankPlan:
    processes: int  # rank processes to start on this machine (= world size: one node)


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` without the keys mmfuse reads itself (not ``Trainer`` arguments)."""
    from mmfuse import builder

    speed_keys = getattr(builder, "SPEED_KEYS", ())
    return {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in speed_keys}


def rank_plan(cfg: DictConfig) -> RankPlan | None:
    """Whether this process must start the job's rank processes (None: run the job here).

    Decided by Lightning itself: the trainer is built from the config (no model, loggers or callbacks)
    and asked whether its strategy would re-run the script for extra ranks.
    """
    if os.environ.get(WORKER_ENV) or cfg.get("trainer") is None:
        return None
    kwargs = trainer_kwargs(cfg)
    if str(kwargs.get("devices", 1)) in ("1", "[0]") and int(kwargs.get("num_nodes", 1) or 1) == 1:
        return None  # one process: nothing to start (the common case, decided without building a Trainer)
    from hydra.utils import instantiate
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the ranks print Lightning's device summary themselves
    try:
        trainer = instantiate(kwargs, logger=False, callbacks=[], enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False)
    finally:
        quiet.setLevel(level)
    strategy = trainer.strategy
    launcher = getattr(strategy, "launcher", None)
    if not isinstance(launcher, _SubprocessScriptLauncher) or strategy.cluster_environment.creates_processes_externally:
        return None  # one process, ddp_spawn (in-process), or a cluster that starts the ranks (SLURM, torchrun)
    if launcher.num_nodes > 1:
        raise MMFuseError(
            f"trainer.num_nodes={launcher.num_nodes}: a multi-node job needs a launcher that starts one process "
            "per device on every node. Fix: hydra/launcher=slurm (see README, 'Multi-GPU and clusters') or torchrun"
        )
    return RankPlan(processes=launcher.num_processes) if launcher.num_processes > 1 else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In a rank process (Linux): receive SIGKILL when the supervisor dies, so no rank is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    env.update({WORKER_ENV: "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    return env


def _function_path(fn: Callable[..., Any]) -> str:
    if fn.__module__ == "__main__" or "<" in fn.__qualname__:
        raise ValueError(f"{fn!r} must be an importable module-level function to run on every rank")
    return f"{fn.__module__}:{fn.__qualname__}"


def run_ranks(fn: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig, plan: RankPlan) -> dict[str, Any]:
    """Run ``fn(cfg)`` on ``plan.processes`` ranks and return rank 0's results (``results.json``).

    A failed rank kills the others; the job's ``results.json`` then says failed with the rank's error
    (``MMFuseError`` when the rank stopped on a user error, ``RankFailed`` otherwise). A rank stopped by
    SIGINT / SIGTERM raises ``RunInterrupted``: the job's ``results.json`` says interrupted.
    """
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(cfg.paths.output_dir)
    completed = completed_job(cfg, run_dir)
    if completed is not None:
        from mmfuse.resume import report_skipped

        return report_skipped(run_dir, completed)
    hydra_cfg = HydraConfig.instance().cfg
    payload = pickle.dumps({"fn": _function_path(fn), "task": cfg, "hydra": hydra_cfg})
    world, port = plan.processes, free_port()
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    log.info("starting %d rank processes (logs: %s)", world, rank_log(run_dir, hydra_cfg.hydra.job.name, "<r>"))
    t0, started = time.perf_counter(), time.time()
    started_at = utc_time(started)  # the ranks' MMFUSE_JOB_STARTED, to the second
    procs, messages = [], []  # messages: a pipe per rank for the one line of a user error
    for rank in range(world):
        read_fd, write_fd = os.pipe()
        console = None if rank == 0 else open(rank_log(run_dir, hydra_cfg.hydra.job.name, rank), "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "mmfuse.distributed"], stdin=subprocess.PIPE,
                                env={**rank_env(rank, world, port), ERROR_FD_ENV: str(write_fd),
                                     JOB_STARTED_ENV: repr(started)},
                                pass_fds=(write_fd,), preexec_fn=preexec, stdout=console,
                                stderr=None if console is None else subprocess.STDOUT)
        os.close(write_fd)
        if console is not None:
            console.close()  # the rank holds its own descriptor
        proc.stdin.write(payload)
        proc.stdin.close()
        procs.append(proc)
        messages.append(read_fd)
    try:
        with _forward_sigterm(procs):
            try:
                failed = _wait(procs)
            except KeyboardInterrupt:  # a terminal's Ctrl-C reached the ranks too: let rank 0 record "interrupted"
                _stop(procs, signal.SIGINT, grace_s=10, settle_s=5)
                raise
            except BaseException:  # SIGTERM (already forwarded to the ranks) or an error here
                _stop(procs, signal.SIGKILL)
                raise
        user_errors = [_read_all(fd) for fd in messages]
    finally:
        for fd in messages:
            os.close(fd)
    if failed is None:
        results = read_results(run_dir)
        if results is None:
            raise RuntimeError(f"all {world} ranks exited cleanly but {run_dir / FILENAME} is missing")
        return record_job_time(run_dir, results, started_at, time.perf_counter() - t0)
    rank, code = failed
    try:
        results = read_results(run_dir)
    except CorruptRecord:  # the ranks' user error says what to do about it; it is left as it is
        results, corrupt = None, True
    else:
        corrupt = False
    stop = stopped_by(code, results)
    if stop is not None:
        record_interrupted(run_dir, results, stop)
        raise stop
    logfile = rank_log(run_dir, hydra_cfg.hydra.job.name, rank)
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    recorded = results.get("error") if results is not None and results.get("status") == "failed" else None
    if code == EXIT_USER_ERROR and user_errors[rank]:  # a config error: the same on every rank, one line
        if recorded is None and not corrupt:
            mark_failed(run_dir, f"{MMFuseError.__name__}: {user_errors[rank]}", wall_time_s=time.perf_counter() - t0)
        raise MMFuseError(user_errors[rank])
    if rank != 0 or recorded is None:  # else rank 0 failed first and recorded why itself
        error = f"rank {rank} of {world} {how}; its log {logfile} ends with: {last_error(logfile)}"
        results = mark_failed(run_dir, error + (f" (rank 0 then: {recorded})" if recorded else ""),
                              wall_time_s=time.perf_counter() - t0)
    raise RankFailed(results["error"])


def stopped_by(code: int, results: dict[str, Any] | None) -> RunInterrupted | None:
    """The signal that ended the job, if a rank ended on SIGINT / SIGTERM: its exit code ``128 + n`` (the
    rank's ``RunInterrupted``), ``-n`` (killed by it before a handler was installed), or rank 0 recorded
    ``status: interrupted``. None: the rank failed."""
    signum = stop_signal(code)
    if signum is not None:
        return RunInterrupted(signum)
    if results is not None and results.get("status") == "interrupted" and results.get("signal") in ("SIGINT", "SIGTERM"):
        return RunInterrupted(signal.Signals[results["signal"]])
    return None


def stop_signal(code: int | None) -> int | None:
    """SIGINT / SIGTERM if a rank's exit code says it ended on one (``128 + n`` or ``-n``), else None."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if code in (128 + signum, -signum):
            return int(signum)
    return None


def record_interrupted(run_dir: Path, results: dict[str, Any] | None, stop: RunInterrupted) -> None:
    """``results.json`` says interrupted by ``stop`` (rank 0 records that itself unless another rank was
    signalled and rank 0 ended otherwise first, e.g. on the lost connection)."""
    if results is not None and results.get("status") != "interrupted":
        atomic_write_json({**results, **failure_fields(stop), "finished_at": utc_now()}, run_dir / FILENAME)


def completed_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The ``results.json`` of this training job when its directory already holds it, completed (a re-run
    sweep: skipped before any rank starts, as ``train`` skips it in one process); None to run the job.

    Raises ``MMFuseError``, starting nothing, when the directory holds another run. A record that cannot
    be read is left to the ranks' ``train``, which says what to do about it.
    """
    if cfg.get("job_name", "train") != "train":
        return None
    from mmfuse.resume import previous_run
    from mmfuse.runinfo import task_overrides

    try:
        if read_results(run_dir) is None:
            return None
    except (MMFuseError, ValueError):  # not JSON, or not a record
        return None
    previous = previous_run(run_dir, task_overrides())
    return previous if previous.get("status") == "completed" else None


def record_job_time(run_dir: Path, results: dict[str, Any], started_at: str, wall_time_s: float) -> dict[str, Any]:
    """``results.json`` with the job's ``started_at``, ``finished_at`` and ``wall_time_s`` as the supervisor
    measured them (rank 0 timed only its own part: from its ``train`` call, after the ranks' start-up and
    imports, to before their shutdown)."""
    results = {**results, "started_at": started_at, "finished_at": utc_now(), "wall_time_s": round(wall_time_s, 3)}
    atomic_write_json(results, run_dir / FILENAME)
    return results


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").strip()


class RankFailed(RuntimeError):
    """A rank process of a multi-process job failed."""


def rank_log(run_dir: Path, job_name: str, rank: int | str) -> Path:
    return run_dir / f"{job_name}_rank{rank}.log"


def last_error(logfile: Path) -> str:
    """The last line of a rank's log (the exception of a traceback, or the error logged last)."""
    try:
        lines = [ln.strip() for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


@contextlib.contextmanager
def _forward_sigterm(procs: list[subprocess.Popen]) -> Iterator[None]:
    """While waiting: SIGTERM (a scheduler's stop) is passed on to the ranks (rank 0 records the run as
    interrupted), then, once they have ended, raises ``RunInterrupted`` here: the entry point exits with 143
    and prints the command that resumes the job."""

    def handler(signum: int, frame: Any) -> None:
        _stop(procs, signal.SIGTERM)
        raise RunInterrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread; the ranks still die with this process (PDEATHSIG)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait(procs: list[subprocess.Popen], grace_s: float = 3.0, stop_grace_s: float = 30.0) -> tuple[int, int] | None:
    """Wait for every rank. On a failure, give the others ``grace_s`` seconds to end on their own, kill the
    rest, and return the root cause ``(rank, exit code)``: a rank stopped by SIGINT / SIGTERM first, then
    one killed by another signal, then the lowest failed rank (a user error ends every rank the same way: rank 0's
    message is reported). A rank stopped by SIGINT / SIGTERM (``stop_signal``) has the signal passed on to
    the others, which get ``stop_grace_s`` seconds to record how the run ended."""
    while True:
        codes = [p.poll() for p in procs]
        if any(c not in (None, 0) for c in codes):
            break
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.2)
    signalled = [stop_signal(c) for c in codes if stop_signal(c) is not None]
    if signalled:
        _stop(procs, signalled[0], grace_s=stop_grace_s)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    codes = [p.poll() for p in procs]
    _stop(procs, signal.SIGKILL)
    bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
    return min(bad, key=lambda rc: (stop_signal(rc[1]) is None and rc[1] >= 0, stop_signal(rc[1]) is None, rc[0]))


def _stop(procs: list[subprocess.Popen], sig: int, grace_s: float = 30, settle_s: float = 0) -> None:
    """Send ``sig`` to the ranks still running after ``settle_s`` seconds; SIGKILL those still there
    ``grace_s`` seconds later. ``settle_s`` is for a signal the ranks may have had already (a terminal's
    Ctrl-C reaches its whole process group): sent again at once, it would be their second and tell rank 0
    to abort while it records how the run ended."""
    settled = time.monotonic() + settle_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, settled - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def use_job_log_handlers(console: bool) -> None:
    """Every log record through the job's handlers (Hydra's ``job_logging``) once.

    Lightning's console handlers are dropped (``joblog.lightning_logs_to_root``). ``console=False`` (ranks
    other than 0, whose stdout and stderr are their log file) also drops the job's console handlers, which
    would write each line into that file a second time.
    """
    import lightning.pytorch  # noqa: F401  (its import adds the handlers)

    lightning_logs_to_root()
    if not console:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (sys.stdout, sys.stderr):
                root.removeHandler(handler)


def worker_main() -> int:
    """Entry of a rank process: rebuild the job's config from stdin, log to its rank file, run ``fn``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log, setup_globals

    setup_globals()  # Hydra's resolvers (${hydra:...}, ${now:...}), as in the job's own process
    # epoch metrics come from torchmetrics, already reduced across ranks: Lightning's advice to add
    # sync_dist=True to them does not apply
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")
    payload = pickle.loads(sys.stdin.buffer.read())
    task: DictConfig = payload["task"]
    full = copy.deepcopy(task)
    with open_dict(full):
        full.hydra = payload["hydra"].hydra
    rank = int(os.environ["RANK"])
    with read_write(full.hydra):
        full.hydra.job.name = f"{full.hydra.job.name}_rank{rank}"
    HydraConfig.instance().set_config(full)
    configure_log(full.hydra.job_logging, full.hydra.verbose)
    module, name = payload["fn"].split(":")
    fn = getattr(importlib.import_module(module), name)
    use_job_log_handlers(console=rank == 0)
    return run_rank(fn, task, rank)


def run_rank(fn: Callable[[DictConfig], Any], task: DictConfig, rank: int) -> int:
    """``fn(task)`` on this rank, as its exit code: 0, ``EXIT_USER_ERROR`` (the one line of the error written
    to ``MMFUSE_RANK_ERROR_FD``), 128 + signal number, or 1. Rank 0 prints to the console, so what it prints
    (the run's summary) also goes to its job log (``joblog.tee_stdout_to_job_log``); the other ranks' stdout
    is their log file already."""
    try:
        with tee_stdout_to_job_log() if rank == 0 else contextlib.nullcontext():
            fn(task)
    except MMFuseError as e:  # the supervisor reports it (one line)
        logging.getLogger("mmfuse").error("rank %d: %s", rank, e)
        if os.environ.get(ERROR_FD_ENV):
            with contextlib.suppress(OSError):
                os.write(int(os.environ[ERROR_FD_ENV]), str(e).encode())
        return EXIT_USER_ERROR
    except RunInterrupted as e:  # recorded by rank 0's run; 128 + the signal's number, as the supervisor's
        return e.exit_code
    except BaseException:
        logging.getLogger("mmfuse").exception("rank %d failed", rank)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
