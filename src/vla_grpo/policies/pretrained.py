"""The one constructor path of every policy: build from arguments or load a policy directory.

A policy directory holds ``vla_policy.json`` (which class, the suite-facing
dimensions, the action-normalization stats) next to the class's own weight
files. :class:`PretrainedPolicy` is the path every policy's ``__init__`` and
``save_pretrained`` go through: loading checks the files and the dimensions
first, so a wrong directory is one line naming it and what was expected
instead of a shape error deep in ``load_state_dict``.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import torch

POLICY_JSON = "vla_policy.json"
FORMAT_VERSION = 1
#: dimensions a loaded policy must share with the configured suite
SUITE_DIMS = ("action_dim", "chunk_size", "state_dim", "image_size")


def optional_path(value: str | None) -> str | None:
    """``value``, or None for the string ``"None"``.

    Why: jsonargparse 4.53 under LightningCLI turns ``--model.policy.init_args.pretrained_path=null``
    (a ``str | None`` argument of a nested subclass) into the string ``"None"``;
    ``tests/test_cli.py::test_jsonargparse_still_turns_a_nested_null_into_the_string_none``
    tells when it stops, and this can go.
    """
    return None if value == "None" else value


def _expected(cls: type) -> str:
    return f"a directory written by {cls.__name__}.save_pretrained"


def read_policy_dir(path: str | Path, cls: type, files: tuple[str, ...]) -> dict:
    """Check that ``path`` is a ``cls`` policy directory holding ``files``; return its json.

    Raises:
        FileNotFoundError: the directory or one of its files is missing.
        ValueError: the json is unreadable or written by another policy class.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"`policy.pretrained_path`: no directory at {path} (expected {_expected(cls)})")
    if not (path / POLICY_JSON).is_file():
        raise FileNotFoundError(f"`policy.pretrained_path`: {path} is missing {POLICY_JSON} (expected {_expected(cls)})")
    try:
        meta = json.loads((path / POLICY_JSON).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"`policy.pretrained_path`: {path / POLICY_JSON} is not readable JSON ({err})") from None
    # the class first: another policy's directory lacks our files, and "wrong class" says why
    if not isinstance(meta, dict) or meta.get("policy_class") != cls.__name__:
        got = meta.get("policy_class") if isinstance(meta, dict) else None
        raise ValueError(f"`policy.pretrained_path`: {path} holds a {got!r} policy (expected {cls.__name__})")
    missing = [name for name in files if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"`policy.pretrained_path`: {path} is missing {', '.join(missing)} (expected {_expected(cls)})"
        )
    return meta


def check_sizes(**sizes: int) -> None:
    """One-line ``ValueError`` naming ``policy.<name>`` for a size below 1."""
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"`policy.{name}` must be >= 1 (got {value})")


def check_dims(path: str | Path, meta: dict, **configured: int) -> None:
    """One-line ``ValueError`` when the directory's dimensions differ from the configured ones."""
    for name, want in configured.items():
        got = meta.get(name)
        if got != want:
            raise ValueError(
                f"`policy.pretrained_path`: {path} holds a policy with {name}={got}, but "
                f"`policy.{name}` is {want} (set it to the suite's {name}, or load a matching directory)"
            )


def write_policy_json(path: str | Path, policy: torch.nn.Module, **extra) -> None:
    """Write ``vla_policy.json``: class, suite dimensions, action stats and class-specific ``extra``."""
    meta = {
        "policy_class": type(policy).__name__,
        "format_version": FORMAT_VERSION,
        **{name: int(getattr(policy, name)) for name in SUITE_DIMS},
    }
    if getattr(policy, "vocab_size", None) is not None:  # a token head: action bins per dimension
        meta["num_bins"] = int(policy.vocab_size)
    # q01/q99 of the demos (OpenVLA's norm stats), applied when decoding actions
    meta.update(action_low=policy.action_low.cpu().tolist(), action_high=policy.action_high.cpu().tolist(), **extra)
    (Path(path) / POLICY_JSON).write_text(json.dumps(meta, indent=2) + "\n")


#: the weights file of policies whose whole state dict is theirs (TinyVLA, the reading VLA)
WEIGHTS_FILE = "model.safetensors"


def save_state(policy: torch.nn.Module, path: Path) -> None:
    """``policy``'s state dict (weights and action stats) as ``path / WEIGHTS_FILE``."""
    from safetensors.torch import save_file

    # clone: the tokenizer's bounds alias action_low/high, which safetensors refuses to write
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in policy.state_dict().items()}, path / WEIGHTS_FILE)


def load_state(policy: torch.nn.Module, path: Path, meta: dict) -> None:
    """Load ``path / WEIGHTS_FILE`` strictly (one line naming the file when it does not fit), then the stats."""
    from safetensors.torch import load_file

    try:
        policy.load_state_dict(load_file(path / WEIGHTS_FILE))
    except (RuntimeError, OSError) as err:
        raise ValueError(f"`policy.pretrained_path`: {path / WEIGHTS_FILE} does not fit "
                         f"({str(err).strip().splitlines()[0]})") from None
    load_action_stats(policy, meta)


def load_action_stats(policy, meta: dict) -> None:
    """Restore the normalization bounds stored by :func:`write_policy_json`; the policy is now pretrained."""
    policy.set_action_stats(torch.tensor(meta["action_low"]), torch.tensor(meta["action_high"]))
    policy.pretrained = True


class PolicyDirectory(NamedTuple):
    """A policy directory opened for loading: where it is and its ``vla_policy.json``."""

    path: Path
    meta: dict


class PretrainedPolicy:
    """Build a policy from its arguments, or load it from a policy directory: the one path for both.

    A policy's ``__init__`` goes through three steps:

    1. ``source, cfg = self.open_pretrained(pretrained_path, **sizes)``: with a directory,
       its files (:attr:`policy_files`) and suite dimensions (:attr:`suite_dims`) are checked
       against the configuration, and the sizes it stores (:attr:`stored_sizes`) replace the
       arguments; ``cfg`` holds the sizes to build with (the arguments when ``source`` is None);
    2. build the modules from ``cfg`` (random weights);
    3. ``self.load_pretrained(source)``: the directory's weights and action stats (nothing when None).

    :meth:`save_pretrained` writes what step 1 reads: :meth:`write_weights`, then
    ``vla_policy.json`` with :meth:`policy_config`. A class whose weights are its whole state
    dict (one ``model.safetensors``) only names its :attr:`stored_sizes` and :meth:`policy_config`.
    """

    #: files a directory of this class holds beside ``vla_policy.json``
    policy_files: tuple[str, ...] = (WEIGHTS_FILE,)
    #: suite dimensions a loaded directory must share with the configuration
    suite_dims: tuple[str, ...] = SUITE_DIMS
    #: constructor argument -> ``vla_policy.json`` key, for the sizes a directory fixes (they win)
    stored_sizes: dict[str, str] = {}

    @classmethod
    def open_pretrained(cls, pretrained_path: str | None, **sizes) -> tuple[PolicyDirectory | None, SimpleNamespace]:
        """The directory at ``pretrained_path`` (None for None or jsonargparse's ``"None"``) and the
        sizes to build with: ``sizes``, those in :attr:`stored_sizes` replaced by the directory's.

        Raises:
            FileNotFoundError: the directory or one of its files is missing.
            ValueError: it holds another class, unreadable json, or other suite dimensions.
        """
        path = optional_path(pretrained_path)
        if path is None:
            return None, SimpleNamespace(**sizes)
        meta = read_policy_dir(path, cls, cls.policy_files)
        check_dims(path, meta, **{name: sizes[name] for name in cls.suite_dims})
        for arg, key in cls.stored_sizes.items():
            sizes[arg] = type(sizes[arg])(meta[key])  # the configured argument's type: int, str, tuple
        return PolicyDirectory(Path(path), meta), SimpleNamespace(**sizes)

    def load_pretrained(self, source: PolicyDirectory | None) -> None:
        """Load ``source``'s weights (strictly) and action stats; nothing when it is None."""
        if source is not None:
            load_state(self, source.path, source.meta)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the policy directory (:meth:`write_weights`, then ``vla_policy.json``); returns it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.write_weights(path)
        write_policy_json(path, self, **self.policy_config())
        return path

    def write_weights(self, path: Path) -> None:
        """The weight files of the directory (default: the whole state dict as :data:`WEIGHTS_FILE`)."""
        save_state(self, path)

    def policy_config(self) -> dict:
        """The class's own ``vla_policy.json`` entries (the sizes :attr:`stored_sizes` reads back)."""
        return {}
