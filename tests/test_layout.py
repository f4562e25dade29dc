"""The README's Layout block is the package's architecture: a folder per layer, every module named, no two
modules sharing a name, and every import inside the package running from a module to its own layer or one
listed before it (read with ast)."""

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
        if not line.startswith("                "):  # a layer's first line: its folder, then its modules
            label = line.split()[0]
            index += 1
            folder = label if label.endswith("/") else ""  # "(top level)"
        for name in re.findall(r"(?<![\w.])[\w/]+\.py\b", line):
            layers[folder + name] = index
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


def test_a_layer_is_a_folder_and_no_two_modules_share_a_name():
    layers = declared_layers()
    for module, index in layers.items():
        top = module.split("/")[0] if "/" in module else ""
        assert {layers[other] for other in layers if (other.split("/")[0] if "/" in other else "") == top} == {index}
    top_level = [module for module in layers if "/" not in module and module != "__init__.py"]
    assert len(top_level) <= 8, top_level
    names = [Path(module).name for module in layers if Path(module).name not in ("__init__.py", "__main__.py")]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []


def test_imports_run_from_a_layer_to_its_own_or_an_earlier_one():
    layers = declared_layers()
    upward = [f"{module} -> {target}" for module in layers
              for target in package_imports(PACKAGE_DIR / module) if layers[target] > layers[module]]
    assert upward == []


def test_the_import_reader_sees_absolute_module_and_lazy_imports():
    source = PACKAGE_DIR / "evaluation" / "model_card.py"
    assert {"evaluation/results.py", "atomic.py", "__init__.py"} <= package_imports(source)
    assert "data/__init__.py" in package_imports(PACKAGE_DIR / "evaluation" / "results.py")  # lazy, in a function
    assert {"models/losses/__init__.py", "models/losses/focal.py", "errors.py"} <= package_imports(
        PACKAGE_DIR / "models" / "losses" / "build.py")
    assert "evaluation/screening.py" in package_imports(PACKAGE_DIR / "train" / "trainer.py")  # from X import module


def test_no_package_hides_a_module_behind_a_name():
    """``retino_utils.data.validate`` is the module, not a function of the same name exported over it."""
    import importlib
    import types

    for init in sorted(PACKAGE_DIR.rglob("__init__.py")):
        package = importlib.import_module(".".join(init.parent.relative_to(PACKAGE_DIR.parent).parts))
        for module in (path for path in init.parent.glob("*.py") if not path.stem.startswith("__")):
            exported = getattr(package, module.stem, None)
            assert exported is None or isinstance(exported, types.ModuleType), f"{package.__name__}.{module.stem}"
