"""jaxplain vs its peers, side by side in one run, as ratios.

    python scripts/bench.py [--only attribution,lime,feature_vis,convert]

Each area's script (scripts/bench_<area>.py) times jaxplain and the peer on the same model and
inputs in this process. Steady-state times exclude compilation, which is reported separately.
Writes a table to stdout and, with --json FILE, the rows as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import platform
import sys
import time

AREAS = ("attribution", "lime", "feature_vis", "convert")


def _load(area):
  path = pathlib.Path(__file__).with_name(f"bench_{area}.py")
  if not path.is_file():
    return None
  spec = importlib.util.spec_from_file_location(f"bench_{area}", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(path.parent))
  spec.loader.exec_module(module)
  return module


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--only", default=",".join(AREAS))
  p.add_argument("--json")
  args = p.parse_args()
  import jax
  rows = []

  def report(name, ours_s, peer_s, compile_s, note=""):
    rows.append({"benchmark": name, "jaxplain_s": ours_s, "peer_s": peer_s,
                 "speedup": peer_s / ours_s if ours_s else float("nan"),
                 "compile_s": compile_s, "note": note})
    print(f"{name:<48s} jaxplain {ours_s * 1e3:9.1f} ms  peer {peer_s * 1e3:9.1f} ms  "
          f"x{peer_s / ours_s:6.2f}  (compile {compile_s:.1f}s) {note}", flush=True)

  print(f"devices: {jax.devices()}  python {platform.python_version()}  "
        f"cpus {__import__('os').cpu_count()}", flush=True)
  for area in args.only.split(","):
    module = _load(area.strip())
    if module is None:
      print(f"(no scripts/bench_{area}.py)")
      continue
    t0 = time.time()
    module.run(report)
    print(f"-- {area}: {time.time() - t0:.0f}s", flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
