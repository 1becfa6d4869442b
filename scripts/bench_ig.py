"""Benchmark: integrated gradients to a completeness tolerance, against Captum's fixed steps.

On real FER2013 PublicTest faces, float32 logits, black baseline, with two models: the converted
pretrained PyTorch ``NetworkV2`` (facial_emotion_recognition 0.3.4, its Sigmoid stripped) and
jaxplain's shipped CNN (Captum runs on a PyTorch twin with the same weights):

* jaxplain ``integrated_gradients_adaptive`` at tol 1% and 0.1%, default settings: share of faces
  whose relative completeness gap |sum(attr) − Δf| / |Δf| is ≤ 1% (≤ 0.1%), worst gap, mean / max
  gradient evaluations per face, wall time (first call with compilation, then steady state) and
  peak memory (peak RSS of a fresh subprocess that loads the model and runs the call);
* Captum ``IntegratedGradients`` (Gauss-Legendre, 32 / 64 / 128 / 256 / 512 steps,
  ``internal_batch_size=512``): share of faces over 1%, worst gap, time.

Timing is side by side in one process: rounds alternate jaxplain (tol 1%), Captum GL-512 and
jaxplain (tol 0.1%), and the ratio is of each one's fastest round.

Targets (issue 12): every face ≤ 1%; mean evaluations ≤ 128; time ≤ 1/3 of Captum at 512 steps;
peak memory for 32 faces ≤ 2 GB.

Usage: python scripts/bench_ig.py [--faces 32] [--target pred|true] [--rounds 2]
       [--models network_v2,jaxplain]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSV = ROOT.parent.parent / "shared/data/fer2013/fer2013_train_public.csv.gz"
CSV = CSV if CSV.is_file() else pathlib.Path("/work/shared/data/fer2013/fer2013_train_public.csv.gz")
STEPS = (32, 64, 128, 256, 512)
TOLS = (0.01, 0.001)


def faces(n: int):
  from jaxplain import data
  test = data.load(CSV).split("PublicTest")
  return data.to_float(test.images[:n]).astype(np.float32), test.labels[:n].astype(np.int32)


def jax_model(name: str):
  if name == "network_v2":
    sys.path.insert(0, str(ROOT / "tests"))
    import reference_models
    return reference_models.network_v2(output_activation="strip")[1]
  import jaxplain
  return jaxplain.load_classifier(jaxplain.shipped_checkpoint())


def torch_model(name: str):
  """The same network in PyTorch on NCHW [0, 1] images, returning logits."""
  import copy

  import torch
  if name == "network_v2":
    sys.path.insert(0, str(ROOT / "tests"))
    import reference_models
    module = copy.deepcopy(reference_models.network_v2()[0])
    module.linear[3] = torch.nn.Identity()  # the Sigmoid: logits, as on the jaxplain side
    for m in module.modules():
      if isinstance(m, torch.nn.ReLU):
        m.inplace = False

    class Normalised(torch.nn.Module):
      def __init__(self):
        super().__init__()
        self.module = module

      def forward(self, x):
        return self.module((x - 0.5) / 0.5)

    return Normalised().eval()
  sys.path.insert(0, str(ROOT / "scripts"))
  from bench_attribution import torch_twin
  return torch_twin(jax_model(name))


def targets(name: str, x, labels, which: str):
  import jax.numpy as jnp
  if which == "true":
    return labels
  return np.asarray(jnp.argmax(jax_model(name).forward(jnp.asarray(x)), axis=1), np.int32)


def peak_rss(name: str, n: int, which: str) -> dict:
  """Peak RSS of a fresh process (run by ``main``) that loads the model and the faces and runs
  ``integrated_gradients_adaptive`` with its defaults at both tolerances."""
  import resource

  import jax
  import jax.numpy as jnp

  from jaxplain import attribution as A
  x, labels = faces(n)
  clf = jax_model(name)
  t = targets(name, x, labels, which)
  for tol in TOLS:
    jax.block_until_ready(A.integrated_gradients_adaptive(clf.forward, jnp.asarray(x), t,
                                                          tol=tol))
  return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def side_by_side(name: str, n: int, which: str, rounds: int) -> tuple[dict, dict]:
  """jaxplain's adaptive IG (tol 1%, 0.1%; default settings) and Captum's GL rules on the same
  faces in this process. Every round runs jaxplain tol 1%, Captum GL-512 and jaxplain tol 0.1%
  one after another (the time ratio is of the fastest round of each); Captum's smaller step
  counts run in the first round only. jaxplain's first call (compilation) is timed apart."""
  import jax
  import jax.numpy as jnp
  import torch
  from captum.attr import IntegratedGradients

  from jaxplain import attribution as A
  x, labels = faces(n)
  clf = jax_model(name)
  t = targets(name, x, labels, which)
  xj = jnp.asarray(x)
  net = torch_model(name)
  xt = torch.as_tensor(x.transpose(0, 3, 1, 2).copy())
  tt = torch.as_tensor(t, dtype=torch.long)
  with torch.no_grad():
    delta = (net(xt) - net(torch.zeros_like(xt))).gather(1, tt[:, None])[:, 0].numpy()
  ig = IntegratedGradients(net)

  def run_ours(tol):
    start = time.perf_counter()
    attr, steps = jax.block_until_ready(A.integrated_gradients_adaptive(clf.forward, xj, t,
                                                                        tol=tol))
    seconds = time.perf_counter() - start
    gap = np.abs(np.asarray(A.completeness_gap(clf.forward, xj, t, attr, relative=True)))
    steps = np.asarray(steps)
    return {"ok": float(np.mean(gap <= tol)), "worst": float(gap.max()),
            "mean_steps": float(steps.mean()), "max_steps": int(steps.max()),
            "seconds": seconds}

  def run_captum(steps):
    start = time.perf_counter()
    _, gap = ig.attribute(xt, target=tt, n_steps=steps, method="gausslegendre",
                          internal_batch_size=512, return_convergence_delta=True)
    seconds = time.perf_counter() - start
    rel = np.abs(gap.detach().numpy()) / np.abs(delta)
    return {"over": float(np.mean(rel > 0.01)), "worst": float(rel.max()), "seconds": seconds}

  def keep_fastest(table, key, result):
    if key not in table or result["seconds"] < table[key]["seconds"]:
      table[key] = result

  mine = {f"first {tol}": run_ours(tol)["seconds"] for tol in TOLS}  # compiles (tol is traced)
  ref: dict = {}
  for r in range(rounds):
    keep_fastest(mine, TOLS[0], run_ours(TOLS[0]))
    keep_fastest(ref, STEPS[-1], run_captum(STEPS[-1]))
    keep_fastest(mine, TOLS[1], run_ours(TOLS[1]))
    if r == 0:
      for steps in STEPS[:-1]:
        ref[steps] = run_captum(steps)
  return mine, ref


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--faces", type=int, default=32)
  parser.add_argument("--target", choices=("pred", "true"), default="pred",
                      help="explain the predicted class (default) or the true label")
  parser.add_argument("--models", default="network_v2,jaxplain")
  parser.add_argument("--rounds", type=int, default=2,
                      help="alternating timing rounds of jaxplain and Captum GL-512")
  parser.add_argument("--peak-rss", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peak_rss:
    print(json.dumps(peak_rss(args.peak_rss, args.faces, args.target)))
    return
  if not CSV.is_file():
    sys.exit(f"needs the FER2013 CSV at {CSV}")
  sys.path.insert(0, str(ROOT / "tests"))
  from torch_compat import import_torchvision
  try:
    import_torchvision()
  except ImportError:
    pass
  import torch
  load = os.getloadavg()
  print(f"# integrated gradients to a completeness tolerance: {args.faces} PublicTest faces, "
        f"float32 logits, black baseline, target={args.target}; CPU, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}; load average at start {load[0]:.1f} "
        f"(shared machine: timings are noisy, ratios are side by side in one process)")
  for name in args.models.split(","):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, __file__, "--peak-rss", name, "--faces",
                          str(args.faces), "--target", args.target], capture_output=True,
                         text=True, env=env, check=True)
    rss = json.loads(run.stdout.strip().splitlines()[-1])["rss_mb"]
    mine, ref = side_by_side(name, args.faces, args.target, args.rounds)
    print(f"\n## {name} (timing: fastest of {args.rounds} alternating rounds; load average "
          f"now {os.getloadavg()[0]:.1f})")
    print("| method | faces ≤ 1% gap (jaxplain: ≤ tol) | worst gap | gradient evaluations / "
          "face (mean, max) | seconds |")
    print("|---|---|---|---|---|")
    for tol in TOLS:
      r = mine[tol]
      print(f"| jaxplain adaptive, tol {tol:g} | {r['ok']:.0%} | {r['worst']:.2%} | "
            f"{r['mean_steps']:.1f}, {r['max_steps']} | {r['seconds']:.1f} "
            f"(first call {mine[f'first {tol}']:.1f}) |")
    for steps in STEPS:
      r = ref[steps]
      print(f"| Captum IntegratedGradients, GL {steps} | {1 - r['over']:.0%} | {r['worst']:.2%} "
            f"| {steps}, {steps} | {r['seconds']:.1f} |")
    ratio = mine[TOLS[0]]["seconds"] / ref[STEPS[-1]]["seconds"]
    print(f"\njaxplain tol 1% time / Captum GL-512 time: {ratio:.2f} (target ≤ 0.33); peak RSS "
          f"of a fresh jaxplain process (model + {args.faces} faces, default settings, both "
          f"tolerances): {rss:.0f} MB (target ≤ 2048)")


if __name__ == "__main__":
  main()
