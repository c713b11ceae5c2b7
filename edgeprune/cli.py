"""The ``edgeprune`` command line: a thin typer app.

Commands only parse arguments, call one library function and turn :class:`EdgepruneError` into a message and an
exit code. Heavy imports (torch, onnxruntime) happen inside command bodies so ``edgeprune --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import EdgepruneError

app = typer.Typer(
    name="edgeprune",
    help="Prune attention heads of BERT-family classifiers and ship INT8 ONNX models for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Shared option aliases (one place, reused by every command).
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model folder or Hugging Face hub id.")]
ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Device profile name (see `edgeprune profiles`) or a .toml path.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output path.")]


@app.command()
def version() -> None:
    """Print the edgeprune version and the versions of its main dependencies."""
    from . import __version__

    typer.echo(f"edgeprune {__version__}")


@app.command()
def prune(
    model: ModelOpt,
    plan: Annotated[Path, typer.Option(help="plan.json with 'num_heads' and 'kept_heads'.")],
    out: OutOpt,
) -> None:
    """Physically remove the heads a plan drops, check parity against masking, and save the smaller model."""
    from .modeling import prune_and_save

    result = prune_and_save(model, plan, out)
    typer.echo(
        f"saved pruned model to {result['out']}: removed {result['heads_removed']} of {result['heads_total']} heads, "
        f"parameters {result['params_before']:,} -> {result['params_after']:,}, max |logit diff| vs masked "
        f"{result['max_abs_diff']:.2e}"
    )


def main() -> None:
    """Console-script entry point: runs the app and maps known errors to exit codes."""
    try:
        app()
    except EdgepruneError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
