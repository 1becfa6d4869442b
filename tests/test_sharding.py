"""Batches over 4 (forced) CPU devices and data sets over 2 processes equal one device's results."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxplain import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A tiny CNN with fixed weights, 10 faces and their saliency / logits, as a subprocess runs them.
_SETUP = """
import json, sys
import jax, numpy as np
from jaxplain import attribution, batching, data, train
cfg = train.TrainConfig(model=dict(widths=(8, 16), depths=(1, 1), hidden=16))
model, _, state = train.init_state(cfg, 1)
clf = train._classifier(model, state, cfg)
faces = data.sample_faces()
x, t = data.to_float(faces.images[:10]), faces.labels[:10].astype(np.int32)
"""


def _env(**extra) -> dict:
  path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
  return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu", **extra}


def _run(code: str, *args: str, env: dict | None = None, timeout: int = 240) -> str:
  env = _env(**(env or {}))
  out = subprocess.run([sys.executable, "-c", _SETUP + textwrap.dedent(code), *args], env=env,
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_map_chunks_over_four_devices_equals_one():
  out = _run("""
      assert jax.local_device_count() == 4, jax.devices()
      seen = []
      def spy(x, t):  # what map_chunks hands the method: a chunk split over the devices
        seen.append((x.shape[0], len(x.sharding.device_set)))
        return attribution.saliency(clf.forward, x, t)
      one = batching.map_chunks(lambda x, t: attribution.saliency(clf.forward, x, t), (x, t),
                                size=3, devices=jax.devices()[:1])
      four = batching.map_chunks(spy, (x, t), size=3)
      many = attribution.attribute_many(clf, x, t, method="integrated_gradients", steps=4,
                                        images_per_batch=6)
      many1 = attribution.attribute_many(clf, x[:6], t[:6], method="integrated_gradients",
                                         steps=4, images_per_batch=6)
      logits = clf.predict(x, batch_size=5)
      from jaxplain import sharding
      try:
        sharding.shard_batch([x[:3]])
      except ValueError as e:
        assert "multiple of the 4 devices" in str(e), e
      else:
        raise AssertionError("3 rows were split over 4 devices")
      print(json.dumps(dict(seen=seen, diff=float(np.abs(one - four).max()),
                            scale=float(np.abs(one).max()), shape=list(four.shape),
                            ig=float(np.abs(many[:6] - many1).max()),
                            logits=float(np.abs(logits - np.asarray(clf.forward(x))).max()))))
      """, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  r = json.loads(out.strip().splitlines()[-1])
  # size 3 rounds up to 4 rows per chunk, one per device: 3 chunks for 10 faces.
  assert r["seen"] == [[4, 4]] * 3
  assert r["shape"] == [10, 48, 48, 1]
  assert r["diff"] <= 1e-5 * max(1.0, r["scale"])
  assert r["ig"] <= 1e-5 and r["logits"] <= 1e-4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_parts_equal_to_one_process(tmp_path):
  init = textwrap.dedent("""
      import sys, jax
      pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
      jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                                 process_id=pid)  # before any other JAX call
      """)
  worker = """
      assert jax.process_count() == 2
      from jaxplain import sharding
      rows = sharding.process_rows(len(x))
      attr = attribution.attribute_many(clf, x[rows], t[rows], method="saliency",
                                        images_per_batch=4)
      sharding.save_part(out, {"saliency": attr, "index": np.arange(len(x))[rows]}, rows=rows)
      jax.distributed.shutdown()
      """
  port = str(_free_port())
  env = _env()
  code = init + _SETUP + textwrap.dedent(worker)
  procs = [subprocess.Popen([sys.executable, "-c", code, str(i), port, str(tmp_path)], env=env,
                            cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  assert sorted(f.name for f in tmp_path.iterdir()) == ["part-00000-of-00002.npz",
                                                        "part-00001-of-00002.npz"]
  joined = sharding.load_parts(tmp_path)
  _run("""
      np.save(sys.argv[1], attribution.attribute_many(clf, x, t, method="saliency",
                                                      images_per_batch=4))
      """, str(tmp_path / "whole.npy"))
  np.testing.assert_array_equal(joined["index"], np.arange(10))
  np.testing.assert_allclose(joined["saliency"], np.load(tmp_path / "whole.npy"), rtol=1e-5,
                             atol=1e-6)


def test_process_rows_cover_the_data_in_order():
  for n, count in ((10, 2), (10, 3), (2, 4), (0, 2)):
    blocks = [sharding.process_rows(n, process_index=i, process_count=count)
              for i in range(count)]
    assert [r for b in blocks for r in range(n)[b]] == list(range(n))
    assert max(b.stop - b.start for b in blocks) - min(b.stop - b.start for b in blocks) <= 1
  with pytest.raises(ValueError, match="process_index"):
    sharding.process_rows(4, process_index=2, process_count=2)


def test_load_parts_refuses_missing_parts(tmp_path):
  rows = sharding.process_rows(5, process_index=1, process_count=2)
  sharding.save_part(tmp_path, {"a": np.ones((rows.stop - rows.start, 2))}, rows=rows,
                     process_index=1, process_count=2)
  with pytest.raises(ValueError, match="incomplete"):
    sharding.load_parts(tmp_path)
  with pytest.raises(ValueError, match="expected 2 rows"):
    sharding.save_part(tmp_path, {"a": np.ones((3, 2))}, rows=slice(3, 5), process_index=1,
                       process_count=2)
  sharding.save_part(tmp_path, {"a": np.zeros((3, 2))}, rows=slice(0, 3), process_index=0,
                     process_count=2)
  np.testing.assert_array_equal(sharding.load_parts(tmp_path)["a"][:, 0], [0, 0, 0, 1, 1])


def test_padded_size():
  assert [sharding.padded_size(n, 4) for n in (1, 4, 5, 8, 10)] == [4, 4, 8, 8, 12]
