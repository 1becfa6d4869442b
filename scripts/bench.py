"""jaxplain vs its peers, side by side in one process, in alternating rounds.

    python scripts/bench.py [--quick] [--rounds R] [--rows PATTERNS] [--modules NAMES]
                            [--json PATH] [--list]

Rows come from the scripts/bench_<module>.py files (every one found, or those --modules names),
each registering ``build(quick) -> Workload`` functions with ``_bench_common.row``. For every
row, jaxplain and the peer run alternately for --rounds rounds (the order flips each round);
the table gives the median and interquartile range (IQR) of both, the median of the per-round
ratios ``peer / jaxplain`` (> 1: jaxplain is faster) with their IQR, and jaxplain's compile time
(first call minus steady state), apart. The devices, thread counts and the CPU load at start
(os.getloadavg) head the output and the JSON record, because a loaded machine moves absolute
times; the ratios of alternating rounds are the numbers to compare.

--rows takes comma-separated globs or substrings of row names (``--rows 'saliency*,lime'``).
--quick shrinks every workload (a smoke run of a couple of minutes). A module written in the old
style (``run(report)`` without registered rows) is run as is, its rows marked "not alternated".
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import platform
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _bench_common as common  # noqa: E402

# Rows in this order first, then any other bench_*.py found (other engineers' rows plug in).
MODULES = ("convert", "attribution", "feature_vis", "lime", "train")


def discover() -> list[str]:
  found = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
  return [m for m in MODULES if m in found] + [m for m in found if m not in MODULES]


def environment() -> dict:
  import jax
  env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "python": platform.python_version(), "machine": platform.machine(),
         "cpus": os.cpu_count(), "loadavg_at_start": list(os.getloadavg()),
         "jax": jax.__version__, "backend": jax.default_backend(),
         "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
         "xla_flags": os.environ.get("XLA_FLAGS", "")}
  try:
    import torch
    env["torch"] = torch.__version__
    env["torch_threads"] = torch.get_num_threads()
    env["torch_device"] = ("cuda:" + torch.cuda.get_device_name(0)) if torch.cuda.is_available() \
        else "cpu"
  except ImportError:
    env["torch"] = None
  return env


def _ms(s: dict) -> str:
  return f"{s['median'] * 1e3:9.1f} ±{s['iqr'] * 1e3:7.1f}"


def print_row(name: str, r: dict) -> None:
  peer = _ms(r["peer_s"]) if "peer_s" in r else " " * 18
  ratio = (f"x{r['ratio']['median']:5.2f} [{r['ratio']['iqr']:4.2f}]" if "ratio" in r
           else " " * 14)
  per = r["ours_s"]["median"] / max(r["items"], 1) * 1e3
  print(f"{name:<46s} {_ms(r['ours_s'])} {peer} {ratio} {r['compile_s']:6.1f} {per:8.2f}"
        f"  {r['peer_name']}; {r['note']}", flush=True)


def _legacy(module, results: list) -> None:
  def report(name, ours_s, peer_s, compile_s, note=""):
    r = {"ours_s": {"median": ours_s, "iqr": 0.0, "min": ours_s, "all": [ours_s]},
         "peer_s": {"median": peer_s, "iqr": 0.0, "min": peer_s, "all": [peer_s]},
         "ratio": {"median": peer_s / ours_s, "iqr": 0.0, "min": peer_s / ours_s,
                   "all": [peer_s / ours_s]},
         "compile_s": compile_s, "items": 1, "peer_name": "", "note": note + " (not alternated)"}
    results.append({"row": name, "area": module.__name__, **r})
    print_row(name, r)
  module.run(report)


def _torch_device(choice: str) -> str:
  if choice != "auto":
    return choice
  try:
    import torch
  except ImportError:
    return "cpu"
  return "cuda" if common.jax_on_gpu() and torch.cuda.is_available() else "cpu"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--modules", help="comma-separated bench_<name>.py modules (default: all found)")
  p.add_argument("--rows", help="comma-separated globs or substrings of row names")
  p.add_argument("--rounds", type=int, default=5, help="alternating rounds per row (default 5)")
  p.add_argument("--quick", action="store_true", help="small workloads, 2 rounds")
  p.add_argument("--json", help="write the environment and every row here")
  p.add_argument("--list", action="store_true", help="list the rows and exit")
  p.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto",
                 help="where the PyTorch peers run (auto: cuda when JAX is on a GPU and torch "
                      "sees one)")
  args = p.parse_args(argv)
  rounds = 2 if args.quick and args.rounds == 5 else args.rounds
  if rounds < 1:
    p.error(f"--rounds must be >= 1, got {rounds}")

  names = args.modules.split(",") if args.modules else discover()
  legacy, skipped = [], []
  for name in names:
    name = name.strip()
    if not (HERE / f"bench_{name}.py").is_file():
      skipped.append(name)
      continue
    before = len(common.ROWS)
    module = importlib.import_module(f"bench_{name}")
    if len(common.ROWS) == before and hasattr(module, "run"):
      legacy.append(module)
  rows = common.select(args.rows)
  if args.list:
    for r in rows:
      print(f"{r.area:<14s} {r.name}")
    return 0

  common.TORCH_DEVICE = _torch_device(args.torch_device)
  env = environment()
  env["peer_device"] = common.TORCH_DEVICE
  print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
  if skipped:
    print(f"(no scripts/bench_{{{','.join(skipped)}}}.py: skipped)", flush=True)
  print(f"{'row':<46s} {'jaxplain ms ±IQR':>18s} {'peer ms ±IQR':>18s} {'peer/jaxplain':>14s} "
        f"{'comp s':>6s} {'ms/item':>8s}  peer; note ({rounds} rounds, "
        f"{'quick' if args.quick else 'full'})", flush=True)
  results = []
  t0 = time.time()

  def record():  # after every row, so a run cut short by a timeout keeps what it measured
    if args.json:
      path = pathlib.Path(args.json)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps({"environment": env, "rounds": rounds, "quick": args.quick,
                                  "rows": results}, indent=1))

  for r in rows:
    try:
      work = r.build(args.quick)
      result = common.measure(work, rounds)
    except Exception as e:  # noqa: BLE001 - one broken row must not lose the others
      print(f"{r.name:<46s} FAILED: {type(e).__name__}: {e}", flush=True)
      results.append({"row": r.name, "area": r.area, "error": f"{type(e).__name__}: {e}"})
      record()
      continue
    results.append({"row": r.name, "area": r.area, **result})
    print_row(r.name, result)
    record()
  for module in legacy if not args.rows else ():
    _legacy(module, results)
  env["loadavg_at_end"] = list(os.getloadavg())
  env["wall_s"] = time.time() - t0
  print(f"-- {len(results)} rows in {env['wall_s']:.0f}s; load at end {env['loadavg_at_end']}",
        flush=True)
  record()
  return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
