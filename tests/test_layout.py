"""The source layout stays as docs/architecture.md draws it: each package imports only from the layers
below it (function-level imports included), no module imports itself back through others, and no
file or function grows past what a reader can hold."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

from captcha_crnn.model.archs import ARCHS
from captcha_crnn.training.config import TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "captcha_crnn"
BENCH = SRC.parents[1] / "benchmarks"
# Bottom up; a module may import from its own layer's package and from any layer below (as in
# docs/architecture.md). "__init__" is the package's public face, cli/demo the entry points.
LAYERS = [
    {"errors", "files", "progress", "version"},
    {"data"},
    {"decode", "model"},
    {"infer"},
    {"evaluate", "viz"},
    {"training"},
    {"service"},
    {"cli", "commands", "demo", "__init__", "__main__"},
]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the captcha_crnn modules it imports, anywhere in its body."""
    known = {module_name(p) for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        mod = module_name(path)
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        out = graph.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.split(".")[0] == "captcha_crnn":
                    target = node.module
                else:
                    continue
                for alias in node.names:  # `from . import x` may name a module
                    out.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.split(".")[0] == "captcha_crnn")
        out.discard(mod)
    return {m: {t for t in ts if t in known} for m, ts in graph.items()}


def layer(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_package_has_a_layer() -> None:
    for mod in imports():
        layer(mod)  # StopIteration names a package missing from LAYERS


def test_imports_go_down_the_layers() -> None:
    bad = [f"{m} -> {t}" for m, ts in imports().items() for t in ts if layer(t) > layer(m)]
    assert not bad, "imports against the layer order of docs/architecture.md:\n" + "\n".join(sorted(bad))


def bench_imports() -> dict[str, set[str]]:
    """Benchmark script -> the benchmark scripts it imports (benchmarks/ scripts import each other by name)."""
    names = {p.stem for p in BENCH.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in BENCH.glob("*.py"):
        out = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in names:
                out.add(node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in names)
        out.discard(path.stem)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a graph, each as the modules round it."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if t == "captcha_crnn" or (m.startswith(t + ".") and t.count(".") < m.count(".")):
                continue  # a package's __init__ re-exports its own modules: not a cycle of logic
            if state.get(t) == 1:
                found.append(path[path.index(t):] + [t] if t in path else [m, t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_cycles() -> None:
    """Neither the package's modules nor the benchmark scripts import themselves back through others."""
    found = [*cycles(imports()), *cycles(bench_imports())]
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_files_and_functions_stay_small() -> None:
    long_files, long_functions = [], []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(SRC)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)


APP_FACTORY = SRC / "service" / "factory.py"  # the one place a FastAPI app is built


def test_one_app_factory() -> None:
    """Every HTTP app (`serve`, `label`) is built by service/factory.py, so all get the same middleware,
    errors, metrics and launcher: a `FastAPI(...)` call anywhere else is a second HTTP stack."""
    assert APP_FACTORY.exists()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("FastAPI", "Starlette"):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    elsewhere = [f for f in found if not f.startswith(str(APP_FACTORY.relative_to(SRC)) + ":")]
    assert found and not elsewhere, "FastAPI apps built outside service/factory.py:\n" + "\n".join(elsewhere)


ARCH_CARDS = SRC / "model" / "archs.py"  # the one table of architectures
ARCH_FIELDS = {"backbone", "preset"}  # what holds an architecture's name
ARCH_CONSTANT = re.compile(r"ARCHS?|PRESETS?|BACKBONES?|NATIVE_\w+|\w*HEIGHT")  # names of architecture tables
AMBIGUOUS = {"ddddocr"}  # also the package's name, a weights source's and the zero-shot reader's: rule 2 only
# (file, literal or constant) that is not an architecture, and why
NOT_ARCHITECTURES = {
    ("training/config.py", "small"): "--reader small: the student, a choice of reader and not a preset",
    ("training/run.py", "small"): "the --reader small value",
    ("training/plan.py", "small"): "the --reader small value",
    ("training/start.py", "small"): "the --reader small value",
    ("model/pretrained.py", "pretrained"): "cache_dir's folder name for the converted ddddocr weights",
}


def _holds_arch(node: ast.AST) -> bool:
    """`x.backbone`, `preset`, `x["backbone"]`: an expression holding a backbone or preset name."""
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value in ARCH_FIELDS
    if isinstance(node, ast.Attribute):
        return node.attr in ARCH_FIELDS
    return isinstance(node, ast.Name) and node.id in ARCH_FIELDS


def _targets(node: ast.AST) -> list[ast.expr]:
    """What an assignment statement assigns to (nothing for other statements)."""
    if isinstance(node, ast.Assign):
        return node.targets
    return [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else []


def _arch_values(tree: ast.AST) -> list[ast.AST]:
    """What is compared with, passed as, stored under or assigned to a backbone or preset."""
    out: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(map(_holds_arch, [node.left, *node.comparators])):
            out += [s for s in (node.left, *node.comparators) if not _holds_arch(s)]
        elif isinstance(node, ast.keyword) and node.arg in ARCH_FIELDS:
            out.append(node.value)
        elif isinstance(node, ast.Dict):
            out += [v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant) and k.value in ARCH_FIELDS]
        elif any(map(_holds_arch, _targets(node))):
            out.append(node.value)  # type: ignore[attr-defined]  # an assignment: _targets says so
    return out


def architecture_mentions(tree: ast.Module) -> set[tuple[str, int]]:
    """(name or literal, line) of each place `tree` names or defines an architecture itself (rules in
    test_architectures_live_in_their_cards)."""
    names, options = set(ARCHS), {f.name for f in fields(TrainConfig)}
    keys = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
    keys |= {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys}
    found = {(n.value, n.lineno) for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names - AMBIGUOUS
             and not (id(n) in keys and n.value in options)}
    found |= {(n.value, n.lineno) for v in _arch_values(tree) for n in ast.walk(v)
              if isinstance(n, ast.Constant) and n.value in names}
    return found | {(t.id, node.lineno) for node in tree.body for t in _targets(node)
                    if isinstance(t, ast.Name) and ARCH_CONSTANT.fullmatch(t.id)}


def test_architectures_live_in_their_cards() -> None:
    """Every architecture is a card of model/archs.py (name, backbone, sizes, input height, channels, input
    norm, weights) and no other module of src names or holds one itself:
    1. no string literal equal to a card's name (a backbone or preset: "plain", "resnet", "ddddocr-bn", "tiny",
       "small", "base", "pretrained", any new card), wherever it stands: a tuple of choices, a dict, a comparison,
       an argument. Exempt: a dict key or subscript naming a TrainConfig option (`{"pretrained": "on"}` is the
       --pretrained option), and "ddddocr" (AMBIGUOUS: also the package, a weights source, a reader);
    2. where a backbone or preset is meant, not even "ddddocr": no card name compared with, passed as
       (`backbone=`), stored under (`{"preset": ...}`, `x["backbone"] = ...`) or assigned to a `backbone` or
       `preset`;
    3. no module-level constant named like an architecture table or input height (ARCHS, PRESETS, BACKBONES,
       NATIVE_*, *HEIGHT; not HEIGHTS, the auto height's choices).
    NOT_ARCHITECTURES lists each exception with its reason; an entry no longer needed fails as well."""
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(SRC.rglob("*.py")):
        if path != ARCH_CARDS:
            for what, line in architecture_mentions(ast.parse(path.read_text(encoding="utf-8"))):
                found.setdefault((path.relative_to(SRC).as_posix(), what), []).append(line)
    bad = [f"{f}:{min(lines)} {what!r}" for (f, what), lines in sorted(found.items())
           if (f, what) not in NOT_ARCHITECTURES]
    stale = [f"{f} {what!r}" for f, what in NOT_ARCHITECTURES if (f, what) not in found]
    assert not bad, "architectures named outside model/archs.py (read them from its cards):\n" + "\n".join(bad)
    assert not stale, "NOT_ARCHITECTURES entries that match nothing any more:\n" + "\n".join(stale)


PLAN_MODULE = "training/plan.py"  # the one place a run's settings are derived from what the user asked


def _call_name(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def _trees() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(SRC).as_posix(), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(SRC.rglob("*.py"))]


def test_train_config_is_settled_only_by_the_plan() -> None:
    """TrainConfig is what the user asked: outside training/plan.py no module that handles one (training/, or any
    importing TrainConfig) calls `replace(<a config>, ...)` or assigns to a config's field."""
    config_name = re.compile(r"cfg|config|settings|asked|base|student|teacher")
    bad = []
    for rel, tree in _trees():
        handles = rel.startswith("training/") or "TrainConfig" in ast.unparse(tree)
        if rel == PLAN_MODULE or not handles:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) == "replace" and node.args:
                if config_name.search(ast.unparse(node.args[0])):
                    bad.append(f"{rel}:{node.lineno} {ast.unparse(node)[:80]}")
            for t in _targets(node) if isinstance(node, (ast.Assign, ast.AnnAssign)) else []:
                if isinstance(t, ast.Attribute) and config_name.fullmatch(ast.unparse(t.value).split(".")[-1]):
                    bad.append(f"{rel}:{node.lineno} {ast.unparse(t)} = ...")
    assert not bad, "a TrainConfig rewritten outside training/plan.py:\n" + "\n".join(bad)


def test_the_start_is_resolved_in_one_place() -> None:
    calls = [f"{rel}:{n.lineno}" for rel, tree in _trees() for n in ast.walk(tree)
             if isinstance(n, ast.Call) and _call_name(n) == "resolve_start"]
    assert len(calls) == 1 and calls[0].startswith(PLAN_MODULE + ":"), calls


def _policy_numbers() -> dict[str, set[str]]:
    """Each tuned constant of training/policy.py -> the ways a help text could spell it. Numbers under 10
    are left out: they name channels, counts and off-switches ("1 grey, 3 colour", "0 = off") too often."""
    from captcha_crnn.training import policy

    out: dict[str, set[str]] = {}
    for name, value in vars(policy).items():
        for v in value if isinstance(value, tuple) else (value,):
            if not name.isupper() or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, int) and v >= 10:
                out.setdefault(name, set()).update({str(v), f"{v:,}", f"{v:,}".replace(",", " ")})
            elif isinstance(v, float) and 0 < v < 1:
                out.setdefault(name, set()).update({f"{v:g}", f"{v:.0%}", f"{v * 100:g} points"})
    return out


def test_help_texts_format_tuned_numbers_from_the_policy() -> None:
    """A help text of a train option names a tuned number through training/policy.py (an f-string field), never
    as a literal that would go stale when the constant moves."""
    tree = ast.parse((SRC / "training" / "config.py").read_text(encoding="utf-8"))
    numbers = _policy_numbers()
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _call_name(node) == "opt" and len(node.args) > 1):
            continue
        help_node = node.args[1]
        parts = help_node.values if isinstance(help_node, ast.JoinedStr) else [help_node]
        literal = " ".join(p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str))
        for name, forms in numbers.items():
            for form in forms:
                if re.search(rf"(?<![\w.]){re.escape(form)}(?![\d])", literal):
                    bad.append(f"config.py:{node.lineno}: {form!r} is policy.{name}")
    assert not bad, "tuned numbers written into help texts:\n" + "\n".join(sorted(set(bad)))


def test_train_config_holds_only_what_a_user_sets() -> None:
    """Every TrainConfig field is a `train` option: a flag made from its metadata, or one the command line takes in
    its own form (named in the field's `cli`). A stage's wiring lives in the plan's Stage, not here."""
    import argparse

    from captcha_crnn.cli import build_parser
    from captcha_crnn.training.config import GENERATED

    sub = next(a for a in build_parser(full=True)._actions if isinstance(a, argparse._SubParsersAction))
    options = {s for a in sub.choices["train"]._actions for s in a.option_strings} | {"DATA"}
    unset = []
    for f in fields(TrainConfig):
        how = f.metadata["cli"]
        named = re.findall(r"--[a-z-]+|DATA", how)
        flag = "--" + f.name.replace("_", "-")
        if (how == GENERATED and flag not in options) or (how != GENERATED and not set(named) & options):
            unset.append(f"{f.name}: {how}")
    assert not unset, "TrainConfig fields no user sets:\n" + "\n".join(unset)
