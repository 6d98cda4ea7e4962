"""Stopping is safe: SIGINT (Ctrl-C) or SIGTERM (Slurm, a cluster's pre-emption) ends a ``fit`` with a
checkpoint that resumes exactly, and a second signal stops at once.

What happens on the first signal (one line is printed, naming the step and what follows):

* during a GRPO rollout round, the step is **abandoned**: the round is cut, the step-start state of
  what the rounds change (prompt sampler, held groups, id counters, the step's random stream) is put
  back, and the checkpoint holds the state before the step. Resuming re-runs the whole step; no half
  round is kept. Weights and optimizer are untouched until the update, so nothing else can differ.
  Under DDP/FSDP the ranks agree first: each rollout round begins with one all-reduce of the flag,
  so a multi-process run stops at the next round boundary (a collective cannot be left half-joined);
* during the update (or an SFT step), the step **finishes** and the checkpoint is written right after
  it, at the point where ``ModelCheckpoint(every_n_train_steps=1)`` would write one. When an evaluation
  is due after that step, it runs first and the run stops as below (Lightning takes an eval as done
  when it resumes from a checkpoint written before it, so the curve would lack that eval);
* during an evaluation, the evaluation finishes (a cut one cannot be resumed part-way: its metrics are
  aggregated at its end), then the next GRPO step stops before its first round (a step without rounds,
  an SFT step, finishes and stops after its update).

The checkpoint goes where ``--ckpt_path=last`` finds it: ``last.ckpt`` in the first ``ModelCheckpoint``'s
folder (the default one if the config names none), written all-or-nothing (:mod:`vla_grpo.checkpoint`,
:class:`vla_grpo.sharding.AtomicModelParallelStrategy`). A second signal while stopping (during the
save, say) exits at once with ``128 + signal``; the file being written is a temporary one, so the
previous checkpoint stands. Simulator workers ignore both signals and die with the trainer
(:mod:`vla_grpo.simpool`): the trainer closes them, or the kernel kills them when it dies.

Under Slurm (Lightning's ``SLURMEnvironment``, ``auto_requeue=True`` by default) the checkpoint is
Lightning's ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` and the job is requeued with ``scontrol requeue``
once it is written, as Lightning's own handler does; the requeued job, started with the same command,
resumes from it by Lightning's Slurm auto-resume (no ``--ckpt_path``).

Why not Lightning's machinery alone: its SIGTERM handler sets a flag that is read after the step *and*
the evaluation (a LIBERO eval outlasts Slurm's grace period), under DDP broadcasts from inside the
signal handler, and writes no checkpoint; its KeyboardInterrupt path saves only through
``OnExceptionCheckpoint``, at whatever point the interrupt landed (half an update, half a round); its
Slurm ``SIGUSR1`` handler saves from inside the handler, mid-step. Those checkpoints load but do not
continue the run exactly. We use its pieces where they fit: the checkpoint is ``trainer.save_checkpoint``
(the strategy's format, the loops' progress), written from ``on_exception`` as ``OnExceptionCheckpoint``
does, and the requeue is Lightning's command.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

#: the signals that stop a run safely (SIGUSR1 too under Slurm auto-requeue: Slurm's ``--signal=USR1@t``)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(Exception):
    """A signal stopped the run after its checkpoint was written (the CLI exits ``128 + signum``)."""

    def __init__(self, signum: int, step: int, path: str | None, where: str | None = None) -> None:
        self.signum, self.step, self.path = signum, step, path
        name = signal.Signals(signum).name
        if where is None:
            where = f"checkpoint of step {step} at {path}; resume with --ckpt_path={path}" if path else "no checkpoint"
        super().__init__(f"stopped by {name}: {where}")


class StepAbandoned(BaseException):
    """Raised into a GRPO step's rollout to abandon it (a ``BaseException``: no ``except Exception`` in a
    rollout's retry path may swallow it); ``args[0]`` is the signal."""


class StopFlag:
    """What a module shares with :class:`SafeStop`: whether a stop was asked, and whether its step can
    be abandoned right now (a GRPO module runs its rollout rounds inside :meth:`abandonable_rounds`)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.abandonable = False
        self.distributed = False  # True: never raise from the handler, the ranks agree at round starts
        self.deferred = False  # the stop waits for the eval due after the step that saw it
        self.restore: Callable[[], None] | None = None  # puts back the abandonable phase's start state

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextmanager
    def abandonable_rounds(self, restore: Callable[[], None]):
        """While inside, a signal abandons the step; ``restore`` puts back the state from before it."""
        self.restore, self.abandonable = restore, True
        try:
            yield
        finally:
            self.abandonable = False

    def abandon_if_requested(self, on_any_rank: Callable[[float], bool]) -> None:
        """At a point every rank reaches together: abandon the step if any rank was signalled."""
        if on_any_rank(float(self.requested)):
            raise StepAbandoned(self.signum or int(signal.SIGTERM))


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SafeStop(Callback):
    """Turns SIGINT/SIGTERM into a resumable checkpoint and a clean exit (the CLI adds it to every run).

    Args:
        requeue: under Slurm, requeue the job (``scontrol requeue``) once the checkpoint is written;
            None = when Lightning's ``SLURMEnvironment`` has ``auto_requeue`` on.
    """

    def __init__(self, requeue: bool | None = None) -> None:
        self.requeue = requeue
        self._previous: dict[int, object] = {}
        self._trainer = None
        self._module = None
        self._active = False

    # -- the flag the module reads -------------------------------------------------
    @staticmethod
    def _flag(pl_module) -> StopFlag:
        flag = getattr(pl_module, "stop_flag", None)
        if flag is None:
            flag = pl_module.stop_flag = StopFlag()
        return flag

    @staticmethod
    def _slurm_requeue(trainer):
        """Lightning's ``SLURMEnvironment`` when it has ``auto_requeue`` on, else None."""
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = trainer._accelerator_connector.cluster_environment  # Lightning's own signal connector reads it so
        return env if isinstance(env, SLURMEnvironment) and env.auto_requeue else None

    def _signals(self, trainer) -> tuple[int, ...]:
        env = self._slurm_requeue(trainer)
        if env is not None and env.requeue_signal is not None:
            return (*STOP_SIGNALS, int(env.requeue_signal))
        return STOP_SIGNALS

    def _install(self, trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self._signals(trainer):
            if signum not in self._previous:
                self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer, self._module, self._active = trainer, pl_module, True
        self._flag(pl_module).distributed = trainer.world_size > 1
        self._install(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning registers its SIGTERM handler after `setup` (Trainer._run): ours replaces it (see the
        # module docstring for why); its SIGUSR1 requeue handler stood aside, as ours was there first
        self._install(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self._active = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    # -- the signal -------------------------------------------------------------------
    def _handle(self, signum: int, frame) -> None:
        if not self._active:  # after the fit (Lightning's teardown may put this handler back): as before it
            previous = self._previous.get(signum)
            if callable(previous):
                return previous(signum, frame)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
            os.kill(os.getpid(), signum)
            return None
        flag = self._flag(self._module)
        name = signal.Signals(signum).name
        if flag.requested:
            _print(f"{name} again: stopping now; the last complete checkpoint stands")
            self._kill_workers()
            os._exit(128 + signum)
        flag.signum = signum
        step = self._trainer.global_step if self._trainer is not None else 0
        if flag.abandonable and not flag.distributed:
            _print(f"{name}: abandoning step {step + 1} (its rollouts are re-run on resume), writing the checkpoint "
                   f"of step {step} (send {name} again to stop at once)")
            raise StepAbandoned(signum)
        _print(f"{name}: stopping after the current step or evaluation, then writing a checkpoint "
               f"(send {name} again to stop at once)")

    def _kill_workers(self) -> None:
        rollout = getattr(self._module, "rollout", None)
        for pid in getattr(rollout, "worker_pids", []) if rollout is not None else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    # -- where the run stops -------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        flag = self._flag(pl_module)
        requested = flag.requested
        if flag.distributed:  # every rank stops after the same step
            requested = bool(trainer.strategy.reduce_boolean_decision(requested, all=False))
        if requested and not flag.deferred and self._evaluates_now(trainer):
            # an eval is due after this step: Lightning runs it after this hook, and a run resumed from a
            # checkpoint written here skips it (it takes the eval as done). Stop where a signal during an
            # eval stops: after it, when the next step begins (a GRPO step abandons its first round) or,
            # for a step without rounds, ends
            flag.deferred = True
            _print("the evaluation due after this step runs first, then the run stops")
            return
        if requested:
            # the step finished: its metrics reach the loggers before the stop. The loop logs them after
            # this hook (its logger connector's two calls below; private, Lightning has no public one),
            # so a stop here would leave the step out of the curves.
            trainer._logger_connector.on_batch_end()
            trainer._logger_connector.update_train_step_metrics()
            raise RunStopped(flag.signum or signal.SIGTERM, trainer.global_step, self._save(trainer))

    @staticmethod
    def _evaluates_now(trainer) -> bool:
        """Whether Lightning evaluates after the current step (its epoch loop's own test, private; there is
        no public one: the schedule has several knobs, val_check_interval, check_val_every_n_epoch, time;
        False when validation is off)."""
        loop = trainer.fit_loop
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, StepAbandoned):
            return
        flag = self._flag(pl_module)
        if flag.restore is not None:
            flag.restore()
        # The abandoned step never ran: the checkpoint's loop counters must not count its batch (Lightning
        # counted it ready and started). Counted, the resumed run evaluates one step early for the rest of
        # the run (`total_batch_idx` sets `val_check_interval`'s schedule), evaluates twice at the end, and
        # logs every step one high. Uncounted, the checkpoint is what Lightning writes after a finished
        # batch ("restarted on last"), a state its own restart handles. Its progress trackers' fields are
        # public; there is no call for this.
        epoch_loop = trainer.fit_loop.epoch_loop
        progress = epoch_loop.batch_progress
        for tracker in (progress.total, progress.current):
            tracker.ready = tracker.started = tracker.processed = tracker.completed
        # When the last finished step was followed by an eval, Lightning's restart makes one empty pass of
        # its loop (to skip that eval, done) that counts a logged step; it expects a checkpoint written at
        # the eval's end, before its loop counts the step. Ours is written after: take that one back.
        empty_pass = self._evaluates_now(trainer)
        epoch_loop._batches_that_stepped -= int(empty_pass)
        path = self._save(trainer)
        epoch_loop._batches_that_stepped += int(empty_pass)
        exception.stopped = RunStopped(flag.signum or signal.SIGTERM, trainer.global_step, path)

    def _path(self, trainer) -> Path:
        cb = trainer.checkpoint_callback
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is not None:
            name = cb.format_checkpoint_name({"epoch": trainer.current_epoch, "step": trainer.global_step},
                                             cb.CHECKPOINT_NAME_LAST)
            return Path(cb.dirpath) / Path(name).name
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def _requeues(self, trainer) -> bool:
        if os.environ.get("SLURM_JOB_ID") is None:
            return False
        return self.requeue if self.requeue is not None else self._slurm_requeue(trainer) is not None

    def _save(self, trainer) -> str:
        requeue = self._requeues(trainer)
        if requeue:
            # Lightning's Slurm resume: a requeued job started without --ckpt_path loads the newest
            # <default_root_dir>/hpc_ckpt_<n>.ckpt (its checkpoint connector's own naming, a private helper)
            from lightning.pytorch.trainer.connectors.checkpoint_connector import (
                _CheckpointConnector,
            )

            path = _CheckpointConnector.hpc_save_path(trainer.default_root_dir)
        else:
            path = str(self._path(trainer))
        path = str(trainer.strategy.broadcast(path))
        if not requeue and isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            # before the save, so the checkpoint's ModelCheckpoint state owns the file: the resumed run
            # overwrites this last.ckpt instead of writing last-v1.ckpt beside it
            trainer.checkpoint_callback.last_model_path = path
        trainer.save_checkpoint(path)
        if requeue and trainer.is_global_zero:
            self._requeue()
        return path

    @staticmethod
    def _requeue() -> None:
        job = os.environ["SLURM_JOB_ID"]
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        if array is not None:
            job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        result = subprocess.call(["scontrol", "requeue", job])  # Lightning's requeue command
        _print(f"requeued Slurm job {job}: it resumes from this checkpoint" if result == 0
               else f"requeueing Slurm job {job} failed (exit {result})")


__all__ = ["RunStopped", "SafeStop", "StepAbandoned", "StopFlag", "STOP_SIGNALS"]
