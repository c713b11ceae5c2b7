"""Errors edgeprune raises on purpose. The CLI turns them into a message and a non-zero exit code."""


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
