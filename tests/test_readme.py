"""The README's library examples run as written (on the shipped checkpoint), with every result
used: JAX arrays are blocked on, so a snippet that only fails when its result is computed (out of
memory, say) fails here too."""

import pathlib
import re

import jax
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run():
  # the PyTorch example needs the user's model, the multi-host one a cluster
  blocks = [b for b in _blocks() if "MyNet" not in b and "jax.distributed" not in b]
  assert len(blocks) >= 4
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    for name, value in list(namespace.items()):  # use every result the block made
      if isinstance(value, (jax.Array, tuple, list)) or hasattr(value, "_fields"):
        leaves = [v for v in jax.tree.leaves(value) if isinstance(v, jax.Array)]
        jax.block_until_ready(leaves)
        for leaf in leaves:
          if np.issubdtype(leaf.dtype, np.floating):
            assert np.isfinite(np.asarray(leaf)).all(), f"{name} has non-finite values"
  assert namespace["logits"].shape == (35, 7)
  assert namespace["ig"].shape == namespace["x"].shape
  assert abs(namespace["gap"]).max() < 0.05 * float(abs(namespace["logits"]).max())


def test_readme_has_two_commands():
  text = README.read_text()
  bash = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
  assert any("jaxplain report" in b for b in bash) and any("scripts/test.sh" in b for b in bash)


def test_every_package_is_installed():
  """A plain (non-editable) install ships only the packages pyproject.toml lists: every folder
  of jaxplain/ with an __init__.py must be there, or `jaxplain report` fails after `pip install .`
  (as it did when jaxplain.metrics was added)."""
  import tomllib
  root = README.parent
  listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
               ["packages"])
  found = {".".join(p.parent.relative_to(root).parts)
           for p in (root / "jaxplain").rglob("__init__.py")}
  assert found <= listed, f"missing from pyproject.toml packages: {sorted(found - listed)}"
