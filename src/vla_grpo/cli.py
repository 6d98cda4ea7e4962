"""``python -m vla_grpo {fit,validate,test} -c conf/x.yaml``: our LightningCLI, bad input as one error line.

Every part is swappable by ``class_path`` (model, policy, suite, loss,
callbacks); ``python -m vla_grpo fit --help`` lists every knob and
``python -m vla_grpo fit --model.help vla_grpo.module.GRPOModule`` a class's own.
Other subcommands (``demos``, ``doctor``) live in :mod:`vla_grpo.commands`, the
default progress bar in :mod:`vla_grpo.progress`. Before ``fit``/``validate``/``test``
build a simulator, MuJoCo's GL backend is checked (:mod:`vla_grpo.glcheck`): a
frame of the configured suite renders in a subprocess, or the run stops with
one line naming the fix.
"""
from __future__ import annotations

import os
import sys
import tempfile

# headless MuJoCo rendering; set before any simulator is imported
os.environ.setdefault("MUJOCO_GL", "egl")

from lightning.pytorch.callbacks import ProgressBar  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.plugins.io import CheckpointIO  # noqa: E402

from vla_grpo.checkpoint import AtomicCheckpointIO  # noqa: E402
from vla_grpo.commands import COMMANDS  # noqa: E402
from vla_grpo.progress import StepBudgetProgressBar  # noqa: E402
from vla_grpo.stopping import RunStopped, SafeStop, StepAbandoned  # noqa: E402

_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:",
          "Expected a <class 'NoneType'>", "Given value")


def one_line(message: str) -> str:
    """jsonargparse's nested, multi-line errors as one line that keeps every clue.

    ``Parser key "model": Problem with given class_path 'vla_grpo.module.GRPOModule':
    Option 'no_such' is not accepted`` instead of ten indented lines.
    """
    parts = [ln.strip().lstrip("- ").strip() for ln in message.splitlines()]
    return " ".join(p for p in parts if p and not p.startswith(_NOISE))


class _OneLineErrorParser(LightningArgumentParser):
    def error(self, message: str, ex: Exception | None = None):
        return super().error(one_line(message), ex)


class VLACLI(LightningCLI):
    """LightningCLI in subclass mode, so ``model:`` picks GRPO or SFT by ``class_path``."""

    def __init__(self, args=None, run: bool = True, **kwargs) -> None:
        super().__init__(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_class=_OneLineErrorParser,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # the SFT data module's suite, chunk size and eval episodes are the model's: configured once
        for target in ("suite", "chunk_size", "eval_splits", "eval_states_per_task", "eval_batch_size"):
            parser.link_arguments("model", f"data.init_args.{target}", compute_fn=_model_link(target),
                                  apply_on="instantiate")

    def _section(self, config, key: str, default=None):
        """``config[key]``, inside the subcommand's section when there is one (LightningCLI's
        private ``_get`` does the same; this keeps us off it)."""
        return config.get(str(self.subcommand), config).get(key, default)

    def instantiate_trainer(self, **kwargs):
        # our progress bar unless the config turns the bar off or names its own
        config = self._section(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        extra = []
        if config.get("enable_progress_bar", True) is not False and not any(
                isinstance(c, ProgressBar) for c in callbacks):
            extra.append(StepBudgetProgressBar())
        # a signal stops the run with a checkpoint that resumes exactly (vla_grpo.stopping)
        if not any(isinstance(c, SafeStop) for c in callbacks):
            extra.append(SafeStop())
        if extra:
            kwargs.setdefault("callbacks", [*callbacks, *extra])
        # checkpoints written all-or-nothing, unless the config names its own CheckpointIO
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        try:
            return super().instantiate_trainer(**kwargs)
        except (TypeError, ValueError) as err:  # Lightning rejects a value (`--trainer.devices=abc`)
            self.parser.error(f"`--trainer`: {_trainer_argument(err, config)}")

    def instantiate_classes(self) -> None:
        # A bad value (group_size < 2, a missing checkpoint, ...) surfaces as one
        # argparse-style line naming the field, not a traceback.
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        for key in ("default_root_dir", "logger.init_args.save_dir"):
            try:
                value = self._section(self.config, f"trainer.{key}", default=None)
            except (AttributeError, KeyError, TypeError):  # no logger, or one without a save_dir
                value = None
            problem = _run_dir_problem(value) if isinstance(value, str) else None
            if problem:
                self.parser.error(f"`--trainer.{key}`: {problem}")
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError) as err:
            self.parser.error(_root_message(err))
        except MisconfigurationException as err:  # Lightning's trainer: accelerator, devices, strategy
            trainer = self._section(self.config, "trainer", default={}) or {}
            chosen = ", ".join(f"{k}={trainer.get(k)!r}" for k in ("accelerator", "devices", "strategy"))
            self.parser.error(f"`--trainer` ({chosen}): {_root_message(err)}")

    # -- the rendering check: one frame of the configured suite in a subprocess, started before the
    # classes are built (it overlaps with that) and awaited before fit/validate/test starts a worker
    def before_instantiate_classes(self) -> None:
        self._use_atomic_sharded_checkpoints()
        self._render_check = None
        if self.subcommand is None:  # run=False (a tool reading the config): nothing will roll out
            return
        suite = getattr(self._section(self.config, "model", default=None), "init_args", None)
        suite = getattr(suite, "suite", None)
        if getattr(suite, "class_path", None) is None:
            return
        from vla_grpo.glcheck import start_suite_check

        init_args = suite.init_args.as_dict() if getattr(suite, "init_args", None) is not None else {}
        try:
            self._render_check = start_suite_check(suite.class_path, init_args)
        except (ImportError, AttributeError, TypeError, ValueError):
            # a bad class_path or init_args (not JSON): instantiation says so in its own line
            self._render_check = None

    def _use_atomic_sharded_checkpoints(self) -> None:
        """Lightning's ``ModelParallelStrategy`` (FSDP2) writes sharded checkpoints in place; a config naming it
        gets our subclass, whose folders are published atomically (:mod:`vla_grpo.checkpoint`)."""
        trainer = self._section(self.config, "trainer", default=None)
        strategy = getattr(trainer, "strategy", None) if trainer is not None else None
        if getattr(strategy, "class_path", None) in ("lightning.pytorch.strategies.ModelParallelStrategy",
                                                      "lightning.pytorch.strategies.model_parallel.ModelParallelStrategy"):
            strategy.class_path = "vla_grpo.checkpoint.AtomicModelParallelStrategy"

    def _await_render_check(self) -> None:
        from vla_grpo.glcheck import finish_suite_check

        problem = finish_suite_check(getattr(self, "_render_check", None))
        self._render_check = None
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(1)

    def before_fit(self) -> None:
        self._await_render_check()

    def before_validate(self) -> None:
        self._await_render_check()

    def before_test(self) -> None:
        self._await_render_check()

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # Lightning reads --ckpt_path's hyperparameters right after parsing, and a truncated file
        # raises there: check it here, so it is one line before anything runs or is written
        subcommand = self.config.get("subcommand")
        if subcommand:
            problem = _check_ckpt_path(self.config[subcommand].get("ckpt_path"), subcommand)
            if problem:
                parser.error(problem)


def _trainer_argument(err: BaseException, config) -> str:
    """Lightning's reason, led by the trainer argument it names (``devices='abc': ...``)."""
    message = _root_message(err)
    config = config.as_dict() if hasattr(config, "as_dict") else dict(config or {})
    named = [k for k in config if f"`{k}`" in message or f"{k}=" in message or f" {k} " in f" {message} "]
    return "; ".join(f"{k}={config[k]!r}" for k in named) + f": {message}" if named else message


def _run_dir_problem(path: str) -> str | None:
    """Why ``path`` can't be a run directory (a file, or nowhere to write), else None.

    Writability is probed by creating and removing a temporary directory in the
    deepest existing ancestor: the permission bits don't tell for root, nor for a
    read-only mount.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file, expected a run directory"
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".vla_grpo_write_probe_").cleanup()
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror}), expected a writable run directory"
    return None


def _model_link(name: str):
    """``model -> model_links(model)[name]``, the value linked into ``data.init_args.<name>``."""

    def compute(model):
        from vla_grpo.data.module import model_links

        return model_links(model)[name]

    return compute


#: jsonargparse's reasons a value is not one of a union's types: true of every failed branch, so they
#: name no cause; the branch whose class raised (a logger that could not start) says what went wrong
_UNION_NOISE = ("Not a valid subclass of", "Expected a <class", "Subclass types expect", "a class path",
                "a dict with", "a dict without")


def _root_message(err: BaseException) -> str:
    """First line of the innermost exception (jsonargparse wraps ours in its own), stopping at one
    raised ``from None`` (ours: it names the file or field; what it replaced does not).

    When that line is only "Not a valid subclass of ..." (a ``Union`` such as ``trainer.logger``,
    one of whose classes raised while being built), the raising class's own message, from
    jsonargparse's list of per-type errors, is the line instead.
    """
    messages = []
    while True:
        messages.append(str(err).strip())
        inner = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if inner is None:
            break
        err = inner
    root = messages[-1].splitlines()[0] if messages[-1] else ""
    if root.startswith("Not a valid subclass of"):
        bullets = [ln.strip()[2:] for m in messages for ln in m.splitlines() if ln.strip().startswith("- ")]
        causes = [b for b in bullets if not b.startswith(_UNION_NOISE)]
        if causes:
            return causes[0]
    return root


def _check_config_files(argv: list[str]) -> str | None:
    """An error line for a ``-c``/``--config`` file that is missing or not valid YAML (naming it)."""
    import yaml

    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg in ("-c", "--config") and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if path is None:
            continue
        if not os.path.isfile(path):
            return f"config file {path} does not exist"
        try:
            with open(path) as f:
                yaml.safe_load(f)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            return f"config file {path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}"
    return None


def _check_ckpt_path(path: str | None, subcommand: str) -> str | None:
    """An error line for a ``--ckpt_path`` that is missing or not a readable checkpoint (a file, or
    the folder of a sharded one: FSDP2's ``torch.distributed.checkpoint`` shards and Lightning's ``meta.pt``)."""
    if path is None or path in ("last", "best", "hpc", "registry"):  # Lightning's named checkpoints
        return None
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    sharded = os.path.isdir(path)
    meta = os.path.join(path, _METADATA_FILENAME) if sharded else path
    if sharded and not (os.path.isfile(meta) and os.path.isfile(os.path.join(path, ".metadata"))):
        return f"`--ckpt_path`: {path} is a folder but not a sharded checkpoint (no {_METADATA_FILENAME}, .metadata)"
    if not os.path.isfile(meta):
        return f"`--ckpt_path`: no checkpoint file at {path} (for `{subcommand}`)"
    import torch

    try:
        ckpt = torch.load(meta, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises several types for a corrupt or truncated file
        return f"`--ckpt_path`: {meta} is not a readable checkpoint ({type(err).__name__}; truncated or not a .ckpt?)"
    if not isinstance(ckpt, dict) or ("state_dict" not in ckpt and not sharded):
        return f"`--ckpt_path`: {path} has no 'state_dict' (expected a Lightning .ckpt)"
    return None


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
        return
    problem = _check_config_files(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    if argv and argv[0] in ("fit", "validate", "test"):
        # `import mujoco` loads the MUJOCO_GL backend; every config imports it (TorchRL does, and so do
        # the imports below), and a bad backend breaks it with a traceback: one line with the fix
        # instead (the frame of the configured suite is checked in VLACLI.before_fit)
        from vla_grpo.glcheck import import_problem

        problem = import_problem()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(1)
    from vla_grpo.checkpoint import CheckpointWriteError
    from vla_grpo.envs.demos import DemoFileError
    from vla_grpo.guard import NonFiniteUpdatesError

    try:
        # args=None: LightningCLI reads sys.argv itself (passing both makes it warn)
        VLACLI(args=None if args is None else argv)
    except DemoFileError as err:  # found while setting up the run, after parsing: still one line
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (NonFiniteUpdatesError, CheckpointWriteError) as err:  # diverged, or could not save: one line, exit 1
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except (RunStopped, StepAbandoned) as err:  # a signal stopped the run (vla_grpo.stopping): 128 + signal
        stopped = err if isinstance(err, RunStopped) else getattr(err, "stopped", None)
        if stopped is None:  # abandoned, but no checkpoint could be written
            signum = err.args[0] if err.args else 2
            print("stopped by a signal before any checkpoint was written", file=sys.stderr)
            raise SystemExit(128 + signum) from None
        print(str(stopped), file=sys.stderr)
        raise SystemExit(128 + stopped.signum) from None
