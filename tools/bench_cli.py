"""The command line shared by the benchmarks (``tools.benchmark``, ``tools.benchmark_data``).

Each benchmark is a parser, a function that measures and a function that prints; this
runs them in that order and writes the result as JSON when ``--json`` is given, with
the exact argument list kept on ``args.argv`` so the result can record its command.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from pretrain.atomic import atomic_write_json


def run_benchmark_cli(
    parser: argparse.ArgumentParser,
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
    argv: list[str] | None = None,
) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), measure, print the report, write ``--json``; returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    result = measure(args)
    report(result)
    if args.json:
        path = atomic_write_json(args.json, result)
        print(f"wrote {path}")
    return 0
