"""The README's Layout block is the package's architecture: it names every module, in layers, and every
import inside the package runs from a module to its own layer or one listed before it (read with ast)."""

import ast
import re
from pathlib import Path

from retino_utils.paths import PACKAGE_DIR

README = PACKAGE_DIR.parent / "README.md"


def declared_layers() -> dict[str, int]:
    """Module path (relative to the package) -> the index of its layer in the README's Layout block."""
    text = README.read_text()
    block = text[text.index("retino_utils/\n", text.index("## Layout")):text.index("\nnotebooks/ ")]
    layers: dict[str, int] = {}
    folder, index = "", -1
    for line in block.splitlines()[1:]:
        if not line.startswith("                "):  # a layer's first line: its label, then its modules
            label = line.split()[0]
            index += 1
            folder = label if label.endswith("/") else ""
        for name in re.findall(r"[\w/]+\.py\b", line):
            layers[name if "/" in name else folder + name] = index
    return layers


def package_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (relative and absolute, lazy ones inside functions too)."""
    module = path.relative_to(PACKAGE_DIR)
    package = module.parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
            elif node.module and node.module.split(".")[0] == "retino_utils":
                base = []
                node = ast.ImportFrom(module=".".join(node.module.split(".")[1:]) or None, names=node.names, level=1)
            else:
                continue
            parts = base + (node.module.split(".") if node.module else [])
            for alias in node.names:  # `from . import GRADES` names the package; `from . import x` may be a module
                candidate = PACKAGE_DIR.joinpath(*parts, alias.name)
                found.add(_module_file(candidate) or _module_file(PACKAGE_DIR.joinpath(*parts)))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "retino_utils":
                    found.add(_module_file(PACKAGE_DIR.joinpath(*alias.name.split(".")[1:])))
    found.discard(None)
    return {str(Path(name).relative_to(PACKAGE_DIR)) for name in found} - {str(module)}


def _module_file(path: Path) -> str | None:
    if path.with_suffix(".py").is_file():
        return str(path.with_suffix(".py"))
    if (path / "__init__.py").is_file():
        return str(path / "__init__.py")
    return None


def test_the_layout_names_every_module_and_nothing_else():
    modules = {str(p.relative_to(PACKAGE_DIR)) for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    layers = declared_layers()
    assert sorted(modules - set(layers)) == [], "modules the README's Layout does not name"
    assert sorted(set(layers) - modules) == [], "modules the README's Layout names that do not exist"


def test_imports_run_from_a_layer_to_its_own_or_an_earlier_one():
    layers = declared_layers()
    upward = [f"{module} -> {target}" for module in layers
              for target in package_imports(PACKAGE_DIR / module) if layers[target] > layers[module]]
    assert upward == []


def test_the_import_reader_sees_relative_absolute_and_lazy_imports():
    source = PACKAGE_DIR / "model_card.py"
    assert {"results.py", "atomic.py", "__init__.py"} <= package_imports(source)
    assert "data/layouts.py" in package_imports(PACKAGE_DIR / "uncertainty.py")  # from .data.layouts import
    assert "data/__init__.py" in package_imports(PACKAGE_DIR / "results.py")  # lazy, inside a function
    assert {"losses/__init__.py", "losses/focal.py", "errors.py"} <= package_imports(
        PACKAGE_DIR / "losses" / "build.py")  # absolute: from retino_utils.losses.focal import
