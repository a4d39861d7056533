"""Every ```python block of README.md runs as pasted, each in a fresh interpreter.

A reader copies a snippet into a file and runs it: so does this test, one
subprocess per block, from an empty folder, with a timeout.  Blocks that are not
Python (a printed table, a dict's layout, the folder tree) are fenced ```text;
every fence names its language, so nothing is skipped by accident.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
#: a fence at the start of a line, its info string, its body, the closing fence
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
TIMEOUT_S = 120          # a snippet takes a few seconds; this only stops a hang


def fenced_blocks(text: str) -> list:
    """``(line, language, code)`` of every fenced block of ``text`` (line is 1-based,
    the opening fence's; language is the fence's info string, "" when it has none)."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2))
            for m in _FENCE.finditer(text)]


def _readme_blocks() -> list:
    with open(README, encoding="utf-8") as f:
        return fenced_blocks(f.read())


def _python_blocks() -> list:
    return [pytest.param(code, id=f"README.md:{line}")
            for line, lang, code in _readme_blocks() if lang == "python"]


def _env(code: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    if re.search(r"^\s*(import|from)\s+keras\b", code, re.M) or "fastadam.keras" in code:
        env["KERAS_BACKEND"] = "torch"          # the backend installed beside torch in CI
    return env


def test_fences_are_found_and_name_their_language():
    """The extraction sees the snippets this file promises to run, and no fence is bare
    (an unlabelled block could be Python that nobody runs)."""
    blocks = _readme_blocks()
    langs = [lang for _, lang, _ in blocks]
    assert langs.count("python") >= 5
    assert any("fastadam.Adam(" in code for _, lang, code in blocks if lang == "python")
    bare = [line for line, lang, _ in blocks if not lang]
    assert bare == [], f"README.md fences without a language at lines {bare} (use ```text)"


def test_fence_parser_on_a_known_text():
    text = "a\n```python\nx = 1\n```\nb\n```text\n{ }\n```\n```bash\nls\n```\n"
    assert fenced_blocks(text) == [(2, "python", "x = 1\n"), (6, "text", "{ }\n"),
                                   (9, "bash", "ls\n")]


@pytest.mark.parametrize("code", _python_blocks())
def test_readme_python_block_runs_as_pasted(code, tmp_path):
    for mod in re.findall(r"^\s*(?:import|from)\s+(torch|keras)\b", code, re.M):
        if importlib.util.find_spec(mod) is None:     # found, not imported: Keras would
            pytest.skip(f"{mod} is not installed")    # pick its backend in this process
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    try:
        out = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), env=_env(code),
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the snippet ran past {TIMEOUT_S} s:\n{code}")
    assert out.returncode == 0, (
        f"this README.md snippet fails when run as pasted (every ```python block must run "
        f"on its own; fence other text as ```text):\n{code}\n--- stderr ---\n"
        f"{out.stderr[-3000:]}")
