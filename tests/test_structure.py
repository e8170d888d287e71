"""Structure rules of the code base (issue 14): dependencies point one way (import-linter contracts in
``.importlinter``), no module uses another module's private names."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("kws_quant", "asr_ext", "eval")
FOLDERS = PACKAGES + ("benchmarks", "tests", "configs", "scripts")


def test_dependencies_point_one_way():
    """The contracts of ``.importlinter``: kws_quant's library layers import no experiment runner, eval or asr_ext;
    eval imports no experiment runner; asr_ext's library layers import no experiment runner. Function-level imports
    count (import-linter reads every import statement)."""
    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert lint_imports(config_filename=os.path.join(ROOT, ".importlinter"), no_cache=True, no_logo=True) == 0
    finally:
        os.chdir(cwd)


def python_files():
    for folder in FOLDERS:
        for base, _, names in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(base, n) for n in sorted(names) if n.endswith(".py"))


def test_no_module_imports_an_underscored_name_of_ours():
    bad = []
    for path in python_files():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                bad += [f"{os.path.relpath(path, ROOT)}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names imported across modules (make them public on purpose):\n" + "\n".join(bad)


@pytest.mark.parametrize("private", ["_qstate", "_quantizers", "_grid"])
def test_quantizer_state_and_grids_are_read_through_the_public_api(private):
    """``layer.quantizer_state(role)``, ``layer.quantizers``, ``quantizer.grid(x, state)`` instead."""
    pattern = re.compile(rf"\b(?!self\b)\w+\.{private}\b")
    bad = [f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}" for path in python_files()
           for i, line in enumerate(open(path, encoding="utf-8"), 1) if pattern.search(line)]
    assert not bad, "\n".join(bad)


MAX_LINES = 500


def test_long_modules_say_why_at_the_top():
    """A source module over 500 lines states why in its docstring ("Longer than 500 lines: ..."), or is split."""
    bad = []
    for path in python_files():
        if os.path.relpath(path, ROOT).split(os.sep)[0] not in PACKAGES:
            continue
        text = open(path, encoding="utf-8").read()
        doc = ast.get_docstring(ast.parse(text, path)) or ""
        if text.count("\n") > MAX_LINES and "Longer than 500 lines:" not in doc:
            bad.append(f"{os.path.relpath(path, ROOT)}: {text.count(chr(10))} lines")
    assert not bad, "\n".join(bad)


def _marks(decorators) -> set:
    """Names of ``pytest.mark.<name>`` in a list of decorator or ``pytestmark`` expressions."""
    names = set()
    for node in decorators:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute) and sub.value.attr == "mark":
                names.add(sub.attr)
    return names


def test_tests_that_start_a_process_carry_the_subprocess_mark():
    """A test function that runs a command (``subprocess``, ``sys.executable``, directly or through a helper of its
    module) is marked ``subprocess`` (itself or its module), so ``-m 'not subprocess'`` leaves out every one."""
    unmarked = []
    for folder, _, files in os.walk(os.path.join(ROOT, "tests")):
        for name in files:
            if not (name.startswith("test_") and name.endswith(".py")):
                continue
            path = os.path.join(folder, name)
            tree = ast.parse(open(path, encoding="utf-8").read())
            module_marks = _marks([n.value for n in tree.body if isinstance(n, ast.Assign)
                                   and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)])
            functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]

            def spawns(fn):
                return any(isinstance(n, ast.Attribute) and ((getattr(n.value, "id", "") == "subprocess")
                                                               or (getattr(n.value, "id", "") == "sys"
                                                                   and n.attr == "executable")) for n in ast.walk(fn))
            helpers = {fn.name for fn in functions if not fn.name.startswith("test_") and spawns(fn)}
            for fn in functions:
                if not fn.name.startswith("test_"):
                    continue
                calls = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
                if (spawns(fn) or calls & helpers) and "subprocess" not in module_marks | _marks(fn.decorator_list):
                    unmarked.append(f"{os.path.relpath(path, ROOT)}::{fn.name}")
    assert not unmarked, f"tests that start a process without @pytest.mark.subprocess: {unmarked}"
