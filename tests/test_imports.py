"""The import graph of latentlm, built from the source (function-local imports included): one way,
no cycle, few local imports, and sampling that never loads the trainer."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the import package and the real folders its symlinks point to
SOURCES = {"latentlm": ROOT / "latentlm", "latentlm.autoencoder": ROOT / "autoencoder",
           "latentlm.diffusion": ROOT / "diffusion", "latentlm.eval": ROOT / "eval"}
MAX_LOCAL_IMPORTS = 8


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("").parts
            if package == "latentlm" and rel[0] in ("autoencoder", "diffusion", "eval"):
                continue  # symlinks: read from the real folder
            name = ".".join((package, *rel))
            found[name.removesuffix(".__init__")] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported latentlm module, line, inside a function) for every import statement of a module;
    an imported module's parent packages count too (Python runs their __init__ first)."""
    tree = ast.parse(path.read_text("utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # for type checkers only; never runs
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in child.names]
            for target in targets:
                while target and target not in known:  # `from m import name`: the module m
                    target = target.rpartition(".")[0]
                while target:
                    if not (name == target or name.startswith(target + ".")):  # own packages run first anyway
                        out.append((target, child.lineno, local))
                    target = target.rpartition(".")[0]
            visit(child, inner)

    visit(tree, False)
    return out


def graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    mods = modules()
    edges, local = {m: set() for m in mods}, []
    for name, path in mods.items():
        for target, line, is_local in imports(name, path, set(mods)):
            edges[name].add(target)
            if is_local:
                local.append((name, line, target))
    return edges, sorted(set(local))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def walk(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (cycle := walk(w)):
                return cycle
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(edges):
        if v not in state and (cycle := walk(v)):
            return cycle
    return None


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in edges.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_graph_has_no_cycle():
    edges, _ = graph()
    assert len(edges) > 40  # the whole package was read
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_few_function_local_imports_each_with_its_reason():
    _, local = graph()
    assert len(local) <= MAX_LOCAL_IMPORTS, local
    for name, line, target in local:
        lines = modules()[name].read_text("utf-8").splitlines()
        said = lines[line - 1] + lines[line - 2]  # a comment on the import or the line above
        assert "#" in said, f"{name}:{line} imports {target} inside a function without saying why"


def test_layers_run_one_way():
    edges, _ = graph()
    for loss in ("latentlm.autoencoder.losses", "latentlm.diffusion.losses", "latentlm.baselines.autoregressive",
                 "latentlm.baselines.masked_diffusion"):
        assert "latentlm.training" not in reachable(edges, loss), f"{loss} imports the trainer"
    for leaf in ("latentlm.errors", "latentlm.device", "latentlm.files", "latentlm.outputs"):
        assert reachable(edges, leaf) <= {"latentlm", "latentlm.errors"}, f"{leaf} is not a leaf"
    sampling = reachable(edges, "latentlm.pipeline_latent_diffusion")
    assert not sampling & {"latentlm.training", "latentlm.recipes", "latentlm.optim", "latentlm.diffusion.losses"}
    models = ("latentlm.layers", "latentlm.autoencoder.modeling_autoencoder", "latentlm.diffusion.modeling_denoiser")
    for model in models:
        assert not reachable(edges, model) & {"latentlm.training", "latentlm.loading", "latentlm.recipes"}


@pytest.mark.slow
def test_importing_the_pipeline_does_not_load_the_trainer():
    code = ("import sys, latentlm.pipeline_latent_diffusion; "
            "print(sorted(m for m in sys.modules if m.startswith('latentlm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout
    assert "latentlm.pipeline_latent_diffusion" in loaded
    for heavy in ("latentlm.training", "latentlm.recipes", "latentlm.optim", "latentlm.diffusion.losses"):
        assert f"'{heavy}'" not in loaded, f"importing the pipeline loaded {heavy}"


def test_public_names_load_lazily():
    import latentlm

    assert set(latentlm.__all__) <= set(dir(latentlm))
    for name in latentlm.__all__:
        assert getattr(latentlm, name) is not None
    try:
        latentlm.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_the_command_line_parses_without_torch():
    """`latentlm --help` (and any parse error) answers at once: the parser is built from light modules;
    torch, diffusers and transformers load only when a command runs."""
    code = ("import sys; from latentlm.cli import build_parser; p = build_parser(); "
            "p.parse_args(['generate', '--model', 'x', 'hi']); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
