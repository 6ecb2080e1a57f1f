"""`autodistil` console script: one module per group of commands, each parser beside its handler.
Bad arguments and bad inputs: a one-line error and exit code 2."""

from __future__ import annotations

import sys

from .common import CLIError, Parser

DESCRIPTION = (
    "AutoDistil: distil a BERT-style teacher into students that meet latency budgets on your "
    "device (K-shot supernets, latency-aware search, fine-tuning, export)"
)


def build_parser() -> Parser:
    from . import jobs, latency, model, search

    p = Parser(prog="autodistil", description=DESCRIPTION)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser, metavar="COMMAND")
    jobs.register_run(sub)
    model.register(sub)
    jobs.register_train(sub)
    latency.register(sub)
    search.register(sub)
    jobs.register_finetune(sub)
    return p


def main(argv=None) -> int:
    try:
        a = build_parser().parse_args(argv)
        a.fn(a)
        return 0
    except CLIError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ConnectionError, KeyError, PermissionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"autodistil: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autodistil: interrupted (finished stages and checkpoints are kept)", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser", "CLIError"]
