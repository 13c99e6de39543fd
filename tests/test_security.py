"""No shell command is built from data: the workflow runs scripts, the code runs argv lists.

Header values and file names (OBJECT, IMTYPE, L0 names) reach rules as wildcards and params;
a shell would interpret them. So every rule uses ``script:`` (no ``shell:``/``run:``), and
the Python code never starts a shell (no ``shell=True``, ``os.system``, ``os.popen``,
``subprocess.getoutput``), passing subprocesses an argument list.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON_DIRS = ("kpfmasters", "scripts", "bench")
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}
SHELL_FUNCTIONS = {
    ("os", "system"),
    ("os", "popen"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
}
# The only command string in the code, with why it is safe: the throw-away PostgreSQL test
# server runs its own binaries as the postgres user through `su -c`, the command quoted by
# shlex.join from the binary's path and a temporary directory (never data).
ALLOWED_COMMAND_STRINGS = {("kpfmasters/workflow/throwaway_pg.py", "shlex.join")}


def python_files() -> list[Path]:
    return [p for d in PYTHON_DIRS for p in sorted((REPO / d).rglob("*.py"))]


def dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def test_every_rule_runs_a_script_never_a_shell_command():
    rules = 0
    for path in RULE_FILES:
        text = path.read_text()
        rules += len(re.findall(r"^\s*rule \w+:", text, re.M))
        for directive in ("shell", "run", "wrapper", "notebook", "cwl"):
            assert not re.search(rf"^\s+{directive}:", text, re.M), f"{path.name}: {directive}:"
    scripts = sum(len(re.findall(r"^\s+script:", p.read_text(), re.M)) for p in RULE_FILES)
    assert rules >= 8 and scripts == rules - 1  # every rule but `all` (inputs only)


def test_python_code_never_starts_a_shell():
    problems = []
    command_strings = set()
    for path in python_files():
        rel = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if not isinstance(node, ast.Call):
                continue
            name = dotted(node.func)
            if name[-2:] in SHELL_FUNCTIONS:
                problems.append(f"{rel}:{node.lineno}: {'.'.join(name)}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    problems.append(f"{rel}:{node.lineno}: shell=...")
            if name[:1] == ("subprocess",) and name[-1] in SUBPROCESS_CALLS and node.args:
                first = node.args[0]
                if isinstance(first, (ast.Constant, ast.JoinedStr, ast.BinOp)) or (
                    isinstance(first, ast.Call) and dotted(first.func)[-1:] == ("format",)
                ):
                    problems.append(f"{rel}:{node.lineno}: command given as a string")
            if name == ("shlex", "join") or name[-1:] == ("quote",):
                command_strings.add((rel, ".".join(name)))
    assert problems == []
    assert command_strings <= ALLOWED_COMMAND_STRINGS


def test_the_audit_sees_a_shell_call():
    """The checks are not vacuous: they flag the patterns they look for."""
    tree = ast.parse("import os, subprocess\nos.system(x)\nsubprocess.run(f'ls {x}', shell=True)")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert dotted(calls[0].func)[-2:] in SHELL_FUNCTIONS
    assert isinstance(calls[1].args[0], ast.JoinedStr)
    assert calls[1].keywords[0].arg == "shell"
