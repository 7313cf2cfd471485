"""The command line every training entry point shares: config files, overrides, exit codes, clear errors.

``python -m <entry> --config RECIPE.yaml [--config MORE.yaml] key=value ...``;
``--print-config`` prints the resolved config. Exit 0 on success, 2 on a
configuration error (before any work, or once the data is known), 1 on a known
failure (unreadable image or checkpoint, non-finite loss, file system error),
printed as one ``error:`` line without a traceback; anything else shows its traceback.
``DROPPOS_DEBUG=1`` in the environment prints the traceback of known failures too.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from ..data.decode import BadImageError
from ..data.loader_timeout import timed_out_message
from ..weights import CheckpointError
from . import distributed as du
from .config import ConfigError
from .guard import NonFiniteLossError
from .slurm_env import SlurmEnvError


def get_args_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description, add_help=True)
    p.add_argument("--config", action="append", default=[], help="recipe YAML (repeatable; later wins)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("opts", nargs="*", help="overrides as key=value (e.g. train.epochs=10)")
    return p


def bad_image_error(exc: BaseException) -> str | None:
    """``cannot read image file <path>: <reason>`` when ``exc`` is a BadImageError, raised here or
    re-raised from a DataLoader worker (then suffixed ``(in a DataLoader worker)``); else None."""
    if isinstance(exc, BadImageError):
        return str(exc)
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    for name in ("BadImageError: ", "UnusableImageError: "):  # the class and its subclass (image_shape)
        lines = [ln for ln in text.splitlines() if name in ln]
        if lines:
            return f"{lines[-1].split(name, 1)[1]} (in a DataLoader worker)"
    return None


def explain_failure(exc: BaseException, skip_hint: str = "set data.skip_bad=true to skip unreadable images") -> str | None:
    """A one-paragraph message for a known kind of failure, or None (then the traceback is shown)."""
    bad = bad_image_error(exc)
    if bad is not None:
        return f"{bad} ({skip_hint})"
    hung = timed_out_message(exc)
    if hung is not None:
        return hung
    if isinstance(exc, (CheckpointError, NonFiniteLossError, OSError, NotImplementedError, SlurmEnvError)):
        return str(exc)
    text = str(exc)
    if isinstance(exc, RuntimeError) and du.get_world_size() > 1:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return (f"distributed training failed on rank {du.get_rank()} of {du.get_world_size()}: {first} "
                "(another process probably stopped or timed out; see its output)")
    return None


def debug_enabled() -> bool:
    """True when ``DROPPOS_DEBUG`` is set to anything but empty / 0: known failures show their traceback."""
    return os.environ.get("DROPPOS_DEBUG", "").strip() not in ("", "0")


def run_cli(
    argv: Sequence[str] | None,
    description: str,
    load: Callable[[Any, Sequence[str]], DictConfig],
    run: Callable[[DictConfig], Any],
) -> int:
    """Parse ``argv``, resolve the config with ``load(recipes, overrides)``, run it, map failures to exit codes."""
    args = get_args_parser(description).parse_args(argv)
    try:
        cfg = load(args.config or None, args.opts)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        run(cfg)
    except ConfigError as exc:  # found once the data is known (e.g. too few batches)
        if debug_enabled():
            traceback.print_exc()
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - known failures get a clear message, others the traceback
        message = explain_failure(exc)
        if message is None:
            raise
        if debug_enabled() or (du.get_world_size() > 1 and not isinstance(exc, (NonFiniteLossError, BadImageError))):
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return 1
    finally:
        du.cleanup()
    return 0


def run_guarded(
    fn: Callable[[], Any],
    known: tuple[type[BaseException], ...] = (),
    skip_hint: str = "set data.skip_bad=true to skip unreadable images",
) -> int:
    """Run ``fn()`` with the exit codes of :func:`run_cli`, for entry points with their own
    argument parsing (Detectron2, MMEngine): 0, ``config error:`` and 2, a known failure (or
    one of ``known``) as one ``error:`` line and 1; anything else raises with its traceback."""
    try:
        fn()
    except ConfigError as exc:
        if debug_enabled():
            traceback.print_exc()
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - known failures get a clear message, others the traceback
        message = explain_failure(exc, skip_hint)
        if message is None and isinstance(exc, known):
            message = str(exc)
        if message is None:
            raise
        if debug_enabled():
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0
