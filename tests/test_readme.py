"""The README's library examples run as written (on the shipped checkpoint)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run():
  blocks = [b for b in _blocks() if "MyNet" not in b]  # the PyTorch one needs the user's model
  assert len(blocks) >= 4
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
  assert namespace["logits"].shape == (35, 7)
  assert namespace["ig"].shape == namespace["x"].shape
  assert abs(namespace["gap"]).max() < 0.05 * float(abs(namespace["logits"]).max())


def test_readme_has_two_commands():
  text = README.read_text()
  bash = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
  assert any("jaxplain report" in b for b in bash) and any("scripts/test.sh" in b for b in bash)
