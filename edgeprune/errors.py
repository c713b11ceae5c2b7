"""Errors edgeprune raises on purpose. The CLI turns them into a message and a non-zero exit code.

Exit codes (README "Commands", docs/errors.md):

    0   success
    2   bad input (the message names the file, row, column, option, field or head)
    3   the accuracy bound cannot be certified
    4   a self-check (parity, tolerance) failed
    5   the system refused a read or write (no space left, permission denied, read-only file system)
    70  unexpected internal error (a bug): a short message and the file the full traceback was written to
    130 interrupted (Ctrl-C); a build says how to continue it with ``--resume``

Messages name options the way the caller spells them: ``--label-column`` when the command line is in use (the
CLI calls :func:`use_cli_names`), ``label_column`` in the Python API. Build messages with :func:`arg`.
"""

from __future__ import annotations

import contextvars

EXIT_SYSTEM = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

# Python argument name -> CLI flag, where the flag is not simply "--" + name with dashes.
CLI_FLAGS = {
    "max_drop_pts": "--max-drop",
    "max_evaluations": "--max-evals",
    "frontier_path": "--frontier",
    "config": "--profile",
}

_interface: contextvars.ContextVar[str] = contextvars.ContextVar("edgeprune_interface", default="python")


def use_cli_names(on: bool = True) -> contextvars.Token:
    """Make :func:`arg` spell options as CLI flags (``on=True``) or Python argument names; returns a reset token."""
    return _interface.set("cli" if on else "python")


def reset_names(token: contextvars.Token) -> None:
    """Undo :func:`use_cli_names`."""
    _interface.reset(token)


def arg(name: str) -> str:
    """How the caller spells the option whose Python argument name is ``name``.

    Args:
        name: the Python argument / ``BuildConfig`` field name, e.g. ``"label_column"``.

    Returns:
        ``"--label-column"`` on the command line, ``"label_column"`` in the Python API.
    """
    if _interface.get() == "cli":
        return CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
    return name


def flag(name: str) -> str:
    """How the caller turns on the boolean option ``name``: ``--resume`` on the command line, ``resume=True`` in
    Python."""
    return arg(name) if _interface.get() == "cli" else f"{name}=True"


class EdgepruneError(Exception):
    """Base class: a problem the user can fix (bad input, unsupported model, broken bound)."""

    exit_code = 2


class UnsupportedModelError(EdgepruneError):
    """The model family has no adapter."""


class PlanError(EdgepruneError):
    """A pruning plan does not fit the model (unknown layer or head, wrong shape)."""


class DataError(EdgepruneError):
    """A dataset file is missing, empty or malformed."""


class ProfileError(EdgepruneError):
    """A device profile is missing or malformed."""


class CertificationError(EdgepruneError):
    """The shipped model does not meet the user's certified accuracy bound."""

    exit_code = 3


class VerificationError(EdgepruneError):
    """A transformation failed its own self-check (parity, tolerance)."""

    exit_code = 4


class MeasureError(EdgepruneError):
    """A model cannot be measured (missing file, ONNX Runtime cannot load or run it) or a latency table is malformed."""


class EmulationError(EdgepruneError):
    """The emulated aarch64 check cannot run (qemu-user or the sysroot missing, the emulated run failed)."""


class OutputFolderError(EdgepruneError):
    """An output folder cannot be used: cannot be created, holds something else, or another build is using it."""


class SystemRefusedError(EdgepruneError):
    """The operating system refused a read or write (no space left, permission denied, read-only file system)."""

    exit_code = EXIT_SYSTEM


class BuildInterrupted(KeyboardInterrupt):
    """A build was interrupted (Ctrl-C). Still a KeyboardInterrupt, so Python callers keep its meaning; its message
    says what was kept and how to continue (``--resume``)."""

    exit_code = EXIT_INTERRUPTED


class Interrupted(EdgepruneError):
    """The command-line form of an interruption (exit code 130): the CLI raises it from the command body, where the
    typer/click wrapper would otherwise turn Ctrl-C into a bare "Aborted!"."""

    exit_code = EXIT_INTERRUPTED
