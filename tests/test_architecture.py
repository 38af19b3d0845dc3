"""The layers of ARCHITECTURE.md, kept true: a module imports only its own layer or lower ones, and the
packages of one layer form no import cycle. Lazy imports inside functions count like top-level ones (they
are real dependencies, only deferred)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "platform" / "forewarn"

# Bottom to top. A module's unit is its first name under forewarn (a package or a top-level module).
LAYERS: list[set[str]] = [
    {"errors", "config", "records", "metrics"},  # 0 foundation
    {"models", "judges", "tracking"},  # 1 engines
    {"pipeline", "pools", "training", "placement", "testbed", "names"},  # 2 platform services
    {"reversegen", "recurrence", "contrastive", "goodtriever", "dpl", "serve", "analyze"},  # 3 capabilities
    {"runner", "cli", "cli_common", "cluster_cli", "runs", "testing"},  # 4 entry points
]
# Entry-point modules inside lower packages: a capability's CLI group and job file sit in layer 4.
ENTRY_MODULES = {"cli", "job"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    if module == "forewarn":
        return 0  # the package itself: its version only
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else parts[0]
    if len(parts) > 2 and (parts[-1] in ENTRY_MODULES or parts[-1].endswith("_job")):
        return len(LAYERS) - 1
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(
        f"{module}: unit {unit!r} is in no layer of tests/test_architecture.py; add it to "
        "one (and to ARCHITECTURE.md)"
    )


def imports() -> dict[str, set[str]]:
    """forewarn module -> the forewarn modules it imports (top level and inside functions)."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in PKG.rglob("*.py"):
        mod = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            out[mod].update(n for n in names if n.startswith("forewarn.") or n == "forewarn")
    return out


def test_layers_import_only_downward() -> None:
    bad = []
    for mod, deps in sorted(imports().items()):
        for dep in sorted(deps):
            if dep != "forewarn" and layer_of(dep) > layer_of(mod):
                bad.append(f"{mod} (layer {layer_of(mod)}) imports {dep} (layer {layer_of(dep)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_cycles_between_packages() -> None:
    """Units of the library (entry-point modules aside) form an acyclic graph."""
    graph: dict[str, set[str]] = defaultdict(set)
    top = len(LAYERS) - 1
    for mod, deps in imports().items():
        if layer_of(mod) == top:
            continue
        unit = mod.split(".")[1] if "." in mod else mod
        for dep in deps:
            if dep == "forewarn" or layer_of(dep) == top:
                continue
            dunit = dep.split(".")[1]
            if dunit != unit:
                graph[unit].add(dunit)
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        seen[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if seen.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if v not in seen and (cycle := visit(v)):
                return cycle
        stack.pop()
        seen[u] = 2
        return None

    for u in sorted(graph):
        if u not in seen and (cycle := visit(u)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_every_unit_has_a_layer() -> None:
    for path in PKG.rglob("*.py"):
        layer_of(module_name(path))


def test_plugin_kinds_match_their_config_unions() -> None:
    """One plug-in pattern: every kind a config accepts has a builder, and every builder a kind."""
    import typing

    from forewarn.config import ModelSpec
    from forewarn.judges.spec import BUILDERS as JUDGES
    from forewarn.judges.spec import JudgeSpec
    from forewarn.models import BUILDERS as BACKENDS

    from forewarn.serve.config import DecodingSpec, StopSpec
    from forewarn.serve.stop_detectors import STOP_BUILDERS
    from forewarn.serve.mitigations import DECODING_BUILDERS

    def kinds(union: object) -> set[str]:
        return {
            typing.get_args(m.model_fields["kind"].annotation)[0]
            for m in typing.get_args(typing.get_args(union)[0])
        }

    assert set(typing.get_args(ModelSpec.model_fields["backend"].annotation)) == set(BACKENDS)
    assert kinds(JudgeSpec) == set(JUDGES)
    assert kinds(DecodingSpec) == set(DECODING_BUILDERS)
    assert kinds(StopSpec) == set(STOP_BUILDERS)


def test_every_actor_pool_comes_from_pools() -> None:
    """Issue 18: one module turns roles into actors. Outside ``forewarn/pools.py`` no code builds Ray actors
    (``ray.remote``) or a Ray Data actor stage (``map_batches`` over a class); they call ``RolePool`` or
    ``data_stage``, which honour placement groups. Ray's own LLM processor (``ray.data.llm``) is exempt."""
    bad = []
    for path in PKG.rglob("*.py"):
        if path.name == "pools.py" and path.parent == PKG:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            func = node.func
            if func.attr == "remote" and isinstance(func.value, ast.Name) and func.value.id == "ray":
                bad.append(f"{module_name(path)}:{node.lineno}: ray.remote")
            if func.attr == "map_batches" and node.args:
                udf = node.args[0]
                if isinstance(udf, ast.Name) and udf.id[:1].isupper():  # a class: an actor stage
                    bad.append(f"{module_name(path)}:{node.lineno}: map_batches({udf.id})")
    assert not bad, "actor pools built outside forewarn.pools:\n" + "\n".join(bad)
