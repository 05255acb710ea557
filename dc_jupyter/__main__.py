"""``python -m dc_jupyter requirements [-o FILE]``: what a worker needs to match this Python."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Print (or write) the worker requirements; ``loadtest`` has its own entry."""
    parser = argparse.ArgumentParser(
        prog="python -m dc_jupyter",
        description="Tools for dc_jupyter (the load test is python -m dc_jupyter.loadtest).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    requirements = commands.add_parser(
        "requirements",
        help="the exact Python, cloudpickle, dask and distributed versions workers need",
    )
    requirements.add_argument("-o", "--output", help="write a requirements file here")
    args = parser.parse_args(argv)

    from dc_jupyter.backends.dask.versions import worker_requirements

    text = worker_requirements()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
        print(f"wrote {args.output}; on each worker: pip install -r {args.output}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
