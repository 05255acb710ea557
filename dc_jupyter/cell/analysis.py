"""Which names a notebook cell reads from the notebook and which it binds.

Pure ``ast`` analysis of an already-transformed cell (plain Python, after
IPython's ``transform_cell``), walked in statement order, so it does not depend
on bytecode and behaves the same on Python 3.10-3.13. Not for: running the
cell, or knowing names that ``exec``/``globals()`` tricks create.

- ``inputs``: names the cell may read before it has bound them itself, in
  the order first read (``x = x + 1`` reads ``x``). Reads inside functions,
  lambdas, classes and comprehensions defined in the cell count too; a read in
  a function body of a name the cell binds at top level does not (by the time
  the function is called the cell has usually bound it).
- ``outputs``: every name the cell binds at top level (assignments, augmented
  assignments, walrus, ``for``/``with``/``except`` targets, imports with
  aliases, ``def``, ``class``, ``match`` captures, ``global`` names assigned in
  functions, ``del`` targets).
- ``deleted``: names the cell ``del``-etes at top level.
- ``has_result``: the last statement is an expression whose value IPython
  would show (not ending in ``;``).
"""

from __future__ import annotations

import ast
import builtins
import io
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CellAnalysis", "analyze_cell"]

# IPython adds these to builtins while a cell runs; a worker has none of them.
BUILTIN_NAMES = frozenset(vars(builtins)) - {"get_ipython", "display", "__IPYTHON__"}


@dataclass(frozen=True)
class CellAnalysis:
    """What a cell reads and binds; see the module docstring."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    deleted: tuple[str, ...]
    has_result: bool
    star_import: bool = False  # ``from m import *``: outputs cannot be known in advance
    builtins_read: tuple[str, ...] = ()  # builtin names read (shadowed in the notebook?)
    imports: tuple[str, ...] = ()  # top-level modules imported anywhere in the cell
    #: Of ``inputs``, those read only inside function bodies: looked up when the
    #: function is called, so they need not exist yet (late binding).
    late_inputs: tuple[str, ...] = ()


def analyze_cell(source: str, filename: str = "<cell>") -> CellAnalysis:
    """Analyse ``source`` (plain Python); raises ``SyntaxError`` like ``compile`` would."""
    tree = ast.parse(source, filename)
    # The compiler's own scope checks; top-level `await` is allowed, as in IPython.
    compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    walker = _TopLevel()
    walker.block(tree.body)
    walker.resolve_deferred()
    has_result = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    if has_result and _ends_with_semicolon(source):
        has_result = False
    inputs = [n for n in walker.inputs if n not in BUILTIN_NAMES]
    builtins_read = [n for n in walker.inputs if n in BUILTIN_NAMES]
    return CellAnalysis(
        inputs=tuple(inputs),
        outputs=tuple(walker.outputs),
        deleted=tuple(walker.deleted),
        has_result=has_result,
        star_import=walker.star_import,
        builtins_read=tuple(builtins_read),
        imports=_imported_modules(tree),
        late_inputs=tuple(n for n in walker.late if n not in BUILTIN_NAMES),
    )


_TRY = (ast.Try, ast.TryStar) if hasattr(ast, "TryStar") else (ast.Try,)


def _imported_modules(tree: ast.AST) -> tuple[str, ...]:
    """Top-level names of the modules the cell imports, in its functions too
    (``import a.b as c`` -> ``a``); relative imports have no module of their own.
    Imports inside ``try`` are left out: the cell may do without them."""
    found: dict[str, None] = {}
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, _TRY):
            todo.extend(node.orelse)
            todo.extend(node.finalbody)
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            for alias in node.names:
                found[alias.name.partition(".")[0]] = None
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found[node.module.partition(".")[0]] = None
    return tuple(found)


def _ends_with_semicolon(source: str) -> bool:
    # Same rule as IPython's DisplayHook.semicolon_at_end_of_expression.
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skip = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)
    for token in reversed(tokens):
        if token.type in skip:
            continue
        return token.type == tokenize.OP and token.string == ";"
    return False


# -- nested scopes: which names resolve to the cell's (module) scope ---------------


def _target_names(node: ast.AST) -> Iterable[str]:
    """Names bound by an assignment target (``a``, ``a, *b``, ``[a, (b, c)]``)."""
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            yield from _target_names(elt)
    elif isinstance(node, ast.Starred):
        yield from _target_names(node.value)


def _import_names(node: ast.Import | ast.ImportFrom) -> Iterable[str]:
    for alias in node.names:
        if alias.name == "*":
            continue
        yield alias.asname or alias.name.split(".")[0]


class _ScopeScan(ast.NodeVisitor):
    """Collect reads and bindings of ONE scope, without entering nested scopes.

    Nested scopes are recorded in ``children`` to be resolved by the caller.
    """

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.binds: set[str] = set()
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()
        self.children: list[ast.AST] = []

    def scan_body(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.visit(stmt)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.reads.add(node.id)
        else:  # Store or Del
            self.binds.add(node.id)
            if isinstance(node.ctx, ast.Del):
                self.reads.add(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.reads.add(node.target.id)  # `x += 1` reads x first
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.globals.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.nonlocals.update(node.names)

    def visit_Import(self, node: ast.Import) -> None:
        self.binds.update(_import_names(node))

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.binds.add(node.name)
        self.generic_visit(node)

    def _visit_def(self, node) -> None:
        self.binds.add(node.name)
        for expr in _def_immediate_exprs(node):
            self.visit(expr)
        self.children.append(node)

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_def

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.binds.add(node.name)
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        self.children.append(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
            self.visit(expr)
        self.children.append(node)

    def _visit_comprehension(self, node) -> None:
        # The first iterable is evaluated in the enclosing scope.
        self.visit(node.generators[0].iter)
        self.children.append(node)
        # A walrus inside a comprehension binds in the enclosing scope.
        for sub in ast.walk(node):
            if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
                self.binds.add(sub.target.id)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    def visit_MatchAs(self, node) -> None:  # pragma: no cover - 3.10+ only syntax
        if node.name:
            self.binds.add(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node) -> None:  # pragma: no cover
        if node.name:
            self.binds.add(node.name)

    def visit_MatchMapping(self, node) -> None:  # pragma: no cover
        if node.rest:
            self.binds.add(node.rest)
        self.generic_visit(node)


def _def_immediate_exprs(node) -> list[ast.expr]:
    """Decorators, defaults and annotations: evaluated where the ``def`` runs."""
    args = node.args
    exprs = [*node.decorator_list, *args.defaults, *(d for d in args.kw_defaults if d)]
    all_args = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    all_args += [a for a in (args.vararg, args.kwarg) if a is not None]
    exprs += [a.annotation for a in all_args if a.annotation is not None]
    if node.returns is not None:
        exprs.append(node.returns)
    return exprs


def _param_names(args: ast.arguments) -> set[str]:
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    return names


def _free_names(node: ast.AST) -> tuple[set[str], set[str]]:
    """For a nested scope: (names it reads from outside, names it assigns as ``global``).

    Names read from outside include those resolved by an enclosing function;
    the caller removes what its own scope binds.
    """
    scan = _ScopeScan()
    params: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        params = _param_names(node.args)
        scan.scan_body(node.body)
    elif isinstance(node, ast.Lambda):
        params = _param_names(node.args)
        scan.visit(node.body)
    elif isinstance(node, ast.ClassDef):
        scan.scan_body(node.body)
    else:  # comprehension: its targets are its own; the first iterable was read outside
        for index, gen in enumerate(node.generators):
            params |= set(_target_names(gen.target))
            if index:
                scan.visit(gen.iter)
            for cond in gen.ifs:
                scan.visit(cond)
        for part in ("elt", "key", "value"):
            if getattr(node, part, None) is not None:
                scan.visit(getattr(node, part))
        # walrus targets belong to the enclosing scope, not this one
        walrus = {
            sub.target.id
            for sub in ast.walk(node)
            if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name)
        }
        scan.binds -= walrus
        scan.reads |= walrus & scan.reads
    local = (params | scan.binds) - scan.globals - scan.nonlocals
    global_writes = scan.binds & scan.globals
    free = (scan.reads - local) | (scan.reads & scan.globals)
    for child in scan.children:
        child_free, child_global_writes = _free_names(child)
        global_writes |= child_global_writes
        if isinstance(node, ast.ClassDef):
            free |= child_free  # class bodies are not visible to nested scopes
        else:
            free |= child_free - local
    return free, global_writes


# -- the cell's own (top-level) scope, in statement order ---------------------------


class _TopLevel(ast.NodeVisitor):
    """Walks top-level statements in order, tracking what is bound so far.

    ``definite``: bound on every path so far; ``possible``: bound on some path.
    A read of a name not definitely bound is an input.
    """

    def __init__(self) -> None:
        self.definite: set[str] = set()
        self.possible: set[str] = set()
        self.inputs: dict[str, None] = {}
        self.outputs: dict[str, None] = {}
        self.deleted: dict[str, None] = {}
        self.deferred: dict[str, None] = {}  # read by function bodies, resolved at the end
        self.bound_here: set[str] = set()  # bound by a top-level statement somewhere
        self.star_import = False
        self.late: list[str] = []  # read only by function bodies, bound nowhere in the cell

    # state helpers
    def load(self, name: str) -> None:
        if name not in self.definite:
            self.inputs.setdefault(name)

    def store(self, name: str) -> None:
        self.definite.add(name)
        self.possible.add(name)
        self.outputs.setdefault(name)
        self.bound_here.add(name)

    def delete(self, name: str) -> None:
        self.load(name)
        self.definite.discard(name)
        self.outputs.setdefault(name)
        self.deleted.setdefault(name)

    def snapshot(self) -> tuple[set[str], set[str]]:
        return set(self.definite), set(self.possible)

    def restore(self, state: tuple[set[str], set[str]]) -> None:
        self.definite, self.possible = set(state[0]), set(state[1])

    def branches(self, *bodies: list[ast.stmt], may_skip: bool = False) -> None:
        """Run ``bodies`` as alternatives from the current state, then merge."""
        start = self.snapshot()
        ends = [start] if may_skip else []
        for body in bodies:
            self.restore(start)
            self.block(body)
            ends.append(self.snapshot())
        self.definite = set.intersection(*(e[0] for e in ends)) if ends else start[0]
        self.possible = set.union(start[1], *(e[1] for e in ends))

    def resolve_deferred(self) -> None:
        self.late = [n for n in self.deferred if n not in self.bound_here and n not in self.inputs]
        for name in self.late:
            self.inputs.setdefault(name)

    def block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.visit(stmt)

    # nested scopes
    def nested(self, node: ast.AST, immediate: bool) -> None:
        free, global_writes = _free_names(node)
        for name in sorted(free):
            if immediate:
                self.load(name)
            else:
                self.deferred.setdefault(name)
        for name in sorted(global_writes):
            self.outputs.setdefault(name)

    # expressions (evaluated now, left to right)
    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.load(node.id)
        elif isinstance(node.ctx, ast.Store):
            self.store(node.id)
        else:
            self.delete(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        timed = _timed_code(node)
        if timed is not None:  # `%time x = f()` binds x where it runs
            self.block(timed)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
            self.visit(expr)
        self.nested(node, immediate=False)

    def _comprehension(self, node) -> None:
        self.visit(node.generators[0].iter)
        self.nested(node, immediate=True)
        for sub in ast.walk(node):
            if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
                self.store(sub.target.id)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    # statements
    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.load(node.target.id)
            self.visit(node.value)
            self.store(node.target.id)
        else:
            self.visit(node.target)
            self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.annotation)  # module-level annotations are evaluated
        if node.value is not None or not isinstance(node.target, ast.Name):
            self.visit(node.target)

    def _for(self, node) -> None:
        self.visit(node.iter)
        start = self.snapshot()
        self.visit(node.target)
        self.block(node.body)
        loop_end = self.snapshot()
        self.restore(start)
        self.definite = start[0]
        self.possible = start[1] | loop_end[1]
        self.block(node.orelse)

    visit_For = visit_AsyncFor = _for

    def visit_While(self, node: ast.While) -> None:
        self.visit(node.test)
        self.branches(node.body, may_skip=True)
        self.block(node.orelse)

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self.branches(node.body, node.orelse)

    def _with(self, node) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.visit(item.optional_vars)
        self.block(node.body)

    visit_With = visit_AsyncWith = _with

    def _try(self, node) -> None:
        start = self.snapshot()
        self.block(node.body)
        self.block(node.orelse)
        ends = [self.snapshot()]
        for handler in node.handlers:
            # A handler may start anywhere in the body: only the start is certain.
            self.definite, self.possible = set(start[0]), set(self.possible | ends[0][1])
            if handler.type is not None:
                self.visit(handler.type)
            if handler.name:
                self.store(handler.name)
            self.block(handler.body)
            ends.append(self.snapshot())
        self.definite = set.intersection(*(e[0] for e in ends))
        self.possible = set.union(*(e[1] for e in ends))
        self.block(node.finalbody)

    visit_Try = _try
    visit_TryStar = _try

    def visit_Match(self, node) -> None:
        self.visit(node.subject)
        start = self.snapshot()
        ends = [start]
        for case in node.cases:
            self.restore(start)
            self.visit(case.pattern)
            if case.guard is not None:
                self.visit(case.guard)
            self.block(case.body)
            ends.append(self.snapshot())
        self.definite = set.intersection(*(e[0] for e in ends))
        self.possible = set.union(*(e[1] for e in ends))

    def visit_MatchAs(self, node) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self.store(node.name)

    def visit_MatchStar(self, node) -> None:
        if node.name:
            self.store(node.name)

    def visit_MatchMapping(self, node) -> None:
        for key in node.keys:
            self.visit(key)
        for pattern in node.patterns:
            self.visit(pattern)
        if node.rest:
            self.store(node.rest)

    def _def(self, node) -> None:
        for expr in _def_immediate_exprs(node):
            self.visit(expr)
        self.nested(node, immediate=False)
        self.store(node.name)

    visit_FunctionDef = visit_AsyncFunctionDef = _def

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        body = _ScopeScan()
        body.scan_body(node.body)
        class_local = body.binds - body.globals
        for name in sorted(body.reads - class_local):  # the class body runs now
            self.load(name)
        for child in body.children:  # methods run later and do not see the class body
            self.nested(child, immediate=isinstance(child, _COMPREHENSIONS))
        for name in sorted(body.binds & body.globals):
            self.outputs.setdefault(name)
        self.store(node.name)

    def visit_Import(self, node: ast.Import) -> None:
        for name in _import_names(node):
            self.store(name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if any(alias.name == "*" for alias in node.names):
            self.star_import = True
        self.visit_Import(node)

    def visit_Global(self, node: ast.Global) -> None:
        pass  # `global x` at top level changes nothing

    def visit_TypeAlias(self, node) -> None:  # Python 3.12+: the value is evaluated lazily
        self.nested(ast.Lambda(args=_NO_ARGS, body=node.value), immediate=False)
        self.visit(node.name)


def _timed_code(node: ast.Call) -> list[ast.stmt] | None:
    """The statements of ``get_ipython().run_line_magic('time', '...')`` (or the cell form)."""
    func = node.func
    if not (
        isinstance(func, ast.Attribute)
        and func.attr in ("run_line_magic", "run_cell_magic")
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "get_ipython"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value == "time"
        and isinstance(node.args[-1], ast.Constant)
        and isinstance(node.args[-1].value, str)
    ):
        return None
    try:
        return ast.parse(node.args[-1].value).body
    except SyntaxError:
        return None


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_NO_ARGS = ast.arguments(
    posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
)
