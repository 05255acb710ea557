"""``%%distribute`` and ``%distribute``: parse options, then call plain functions.

Thin on purpose: the work is in ``cell.run_cell`` and ``connection``. Bad
options raise ``UsageError`` with the usage text, before anything is sent.
"""

from __future__ import annotations

import argparse
import builtins
import keyword
import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from dc_jupyter.backends.dask import connection
from dc_jupyter.backends.dask.backend import threads_warning
from dc_jupyter.cell.run import CellOptions, run_cell
from dc_jupyter.core.function import JobOptions

_MAP_SPLIT = re.compile(r"(?:^|\s)--map(?:\s+|$)")
_MAP_SPEC = re.compile(r"^\s*([A-Za-z_]\w*)\s+in\s+(\S.*?)\s*$", re.DOTALL)
#: An option written after ``--map NAME in EXPR``: where EXPR ends.
_OPTION_AFTER_MAP = re.compile(
    r"\s(?=(?:--(?:async|out|local|retries|resources|timeout|pull|scheduler|map)|-o)(?:[\s=]|$))"
)
#: IPython's output cache and input history names (_, __, _5, _i, _ii3, ...).
_SHELL_CACHE_NAME = re.compile(r"^(_{1,3}|_i{1,3}|_i?\d+|_[ido]h)$")


def _resources(text: str) -> dict[str, float]:
    resources = {}
    for part in filter(None, text.split(",")):
        name, sep, amount = part.partition("=")
        try:
            resources[name.strip()] = float(amount) if sep else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--resources {text}: {amount!r} is not a number; write e.g. GPU=1,MEMORY=4e9"
            ) from None
    return resources


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if not n.isidentifier()]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--pull takes names like a,b, not {text!r}")
    return names


@magics_class
class DistributeMagics(Magics):
    """The ``%%distribute`` cell magic and ``%distribute`` line magic."""

    @magic_arguments(name="%distribute")  # shown as %%distribute
    @argument(
        "--async",
        dest="run_async",
        action="store_true",
        help="Return at once; the namespace is updated when the cell finishes.",
    )
    @argument("-o", "--out", metavar="NAME", help="Keep the handle (JobFuture) in NAME.")
    @argument(
        "--local",
        action="store_true",
        help="Run in this process, through the same pickling round trip.",
    )
    @argument("--retries", type=int, default=0, metavar="N", help="Retry a failed run N times.")
    @argument(
        "--resources",
        type=_resources,
        default={},
        metavar="GPU=1",
        help="Worker resources the cell needs, e.g. GPU=1,MEMORY=4e9.",
    )
    @argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="Raise TimeoutError and cancel the remote work after SECONDS.",
    )
    @argument(
        "--pull",
        type=_names,
        metavar="a,b",
        help="Bring back only these names (default: every name the cell assigns).",
    )
    @argument("--scheduler", metavar="ADDRESS", help="Run this cell on the scheduler at ADDRESS.")
    @argument(
        "--map",
        nargs=3,  # documentation only: _parse reads the raw text, EXPR may hold spaces
        metavar=("NAME", "in", "EXPR"),
        help=(
            "Sweep (put it last): run the cell once per element of EXPR, in parallel, with "
            "NAME bound to it; every name the cell assigns becomes a list in input order."
        ),
    )
    @cell_magic
    def distribute(self, line: str, cell: str) -> Any:
        """Run this cell on a Dask worker as if it ran here.

        The notebook values the cell reads are sent with it; every name it
        assigns comes back; its last expression is the cell's result; its
        output appears while it runs; errors show as ordinary tracebacks.
        Example::

            %%distribute --timeout 60
            import numpy as np
            mean = np.random.default_rng(seed).normal(size=n).mean()
            mean
        """
        __tracebackhide__ = True
        options = self._parse(line)
        return run_cell(self.shell, cell, options, header=f"%%distribute {line}".rstrip())

    def _parse(self, line: str) -> CellOptions:
        parts = _MAP_SPLIT.split(line, maxsplit=1)
        map_name = map_expr = None
        if len(parts) == 2:
            match = _MAP_SPEC.match(parts[1])
            if match is None:
                raise UsageError(
                    f"--map needs NAME in EXPR, e.g. `%%distribute --map x in range(4)`, "
                    f"not {parts[1]!r}."
                )
            map_name, map_expr = match.groups()
            # Options written after the sweep (`--map x in range(3) --local`) are
            # options, not part of EXPR.
            expr, *rest = _OPTION_AFTER_MAP.split(map_expr, maxsplit=1)
            if rest:
                map_expr = expr.strip()
                parts[0] = f"{parts[0]} {rest[0]}"
        try:
            args = parse_argstring(self.distribute, parts[0])
        except UsageError as exc:
            raise UsageError(f"{exc}\n{_usage()}") from None
        except ValueError as exc:  # shlex: an unbalanced quote
            raise UsageError(f"%%distribute {line}: {exc}\n{_usage()}") from None
        try:  # the rules of @compute_this(retries=, resources=, timeout=): one set for both
            JobOptions(retries=args.retries, resources=args.resources, timeout=args.timeout)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"%%distribute: {exc}\n{_usage()}") from None
        if args.out is not None:
            self._check_out_name(args.out)
        if args.local and args.scheduler:
            raise UsageError("--local and --scheduler contradict each other; choose one.")
        return CellOptions(
            run_async=args.run_async,
            out=args.out,
            local=args.local,
            retries=args.retries,
            resources=args.resources,
            timeout=args.timeout,
            pull=args.pull,
            scheduler=args.scheduler,
            map_name=map_name,
            map_expr=map_expr,
        )

    def _check_out_name(self, name: str) -> None:
        """Refuse an ``-o`` name that is no variable name or would break later cells."""
        if not name.isidentifier() or keyword.iskeyword(name):
            raise UsageError(f"-o/--out takes a variable name, not {name!r}\n{_usage()}")
        hidden = getattr(self.shell, "user_ns_hidden", {}) if self.shell is not None else {}
        if (
            name.startswith("__")
            or name in hidden
            or _SHELL_CACHE_NAME.match(name)
            or hasattr(builtins, name)
        ):
            raise UsageError(
                f"-o/--out {name}: that name belongs to Python or IPython itself (a builtin, "
                "a dunder name or the shell's own machinery), and replacing it would break "
                f"later cells. Choose another name, e.g. -o handle.\n{_usage()}"
            )

    @line_magic("distribute")
    def distribute_line(self, line: str) -> Any:
        """Choose or show the cluster that ``%%distribute`` and ``@compute_this`` use.

        Usage::

            %distribute                              show the cluster in use
            %distribute connect tcp://host:8786      use the scheduler at an address
            %distribute connect --scheduler-file F   use the scheduler in a scheduler file
            %distribute local [N]                    start an embedded local cluster of N workers
            %distribute close                        close the clusters dc_jupyter opened
            %distribute requirements                 the versions workers need (pip format)
            %distribute logs [N]                     last N (20) lines of the embedded cluster's logs
        """
        words = line.split()
        command, rest = (words[0], words[1:]) if words else ("", [])
        if command == "" and not rest:
            return _cluster_info(connection.current_client())
        if command == "connect" and len(rest) == 1 and not rest[0].startswith("-"):
            return _cluster_info(connection.connect(rest[0]))
        if command == "connect" and len(rest) == 2 and rest[0] == "--scheduler-file":
            client = connection.connect(scheduler_file=rest[1])
            return _cluster_info(client)
        if command == "local" and len(rest) <= 1:
            if rest and not (rest[0].isdigit() and int(rest[0]) > 0):
                raise UsageError(f"%distribute local takes a number of workers, not {rest[0]!r}")
            client = connection.start_local(int(rest[0]) if rest else None)
            return _cluster_info(client)
        if command == "requirements" and not rest:
            from dc_jupyter.backends.dask.versions import worker_requirements

            print(worker_requirements(), end="")
            return None
        if command == "logs" and len(rest) <= 1:
            if rest and not rest[0].isdigit():
                raise UsageError(f"%distribute logs takes a number of lines, not {rest[0]!r}")
            print(connection.embedded_logs(int(rest[0]) if rest else 20))
            return None
        if command == "close" and not rest:
            connection.close()
            print("dc_jupyter: closed the clusters and connections it opened.")
            return None
        raise UsageError(f"%distribute {line!r} is not understood.\n{self.distribute_line.__doc__}")


def _usage() -> str:
    return (
        "usage: %%distribute [--async] [-o NAME] [--local] [--retries N] [--resources GPU=1] "
        "[--timeout SECONDS] [--pull a,b] [--scheduler ADDRESS] [--map NAME in EXPR]\n"
        "See %%distribute? for what each option does."
    )


def _cluster_info(client: Any) -> ClusterInfo:
    return ClusterInfo(connection.describe(client), warning=threads_warning(client.nthreads()))


class ClusterInfo:
    """What ``%distribute`` shows: the cluster in use, as text and as HTML.

    ``warning``: said under the summary (e.g. workers running several threads).
    """

    def __init__(self, info: dict[str, Any], warning: str | None = None) -> None:
        self.info = info
        self.warning = warning

    def _summary(self) -> str:
        info = self.info
        kind = "embedded local cluster" if info["embedded"] else "Dask cluster"
        return (
            f"{kind} at {info['address']}: {info['workers']} workers, {info['threads']} threads, "
            f"{_gib(info['memory'])} memory"
        )

    def __repr__(self) -> str:
        text = f"{self._summary()}\ndashboard: {self.info['dashboard']}"
        return f"{text}\nWarning: {self.warning}" if self.warning else text

    def _repr_html_(self) -> str:
        import html

        link = html.escape(str(self.info["dashboard"]))
        warning = (
            f'<br><span style="color:#b45309">Warning: {html.escape(self.warning)}</span>'
            if self.warning
            else ""
        )
        return (
            f"<div>{html.escape(self._summary())}<br>"
            f'dashboard: <a href="{link}" target="_blank">{link}</a>{warning}</div>'
        )


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"
