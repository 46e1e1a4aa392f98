"""Bit-identity check of a refactoring: train every preset with step budgets (no wall clock), one
thread and a fixed seed, and hash the weights each run writes.

    python benchmarks/diagnostics/bit_identity.py --json benchmarks/results/bit_identity_<commit>.json   # record
    python benchmarks/diagnostics/bit_identity.py --compare benchmarks/results/bit_identity_1424ec3.json  # check

Each row is one small run through :func:`sbdiff.fit` (the public API, so the script runs unchanged on
older commits: ``PYTHONPATH=<checkout>/src python benchmarks/diagnostics/bit_identity.py``). A row's hash is the
SHA-256 of ``model.safetensors`` as written, and ``tensors`` the SHA-256 over its tensors in key
order (bytes, dtypes and shapes), which does not depend on the file's header layout. ``--compare``
prints one line per row (``same`` / ``DIFFERENT``) and exits with status 1 when a row differs.
The hashes hold for one machine and torch build: record and compare on the same machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COMMON = """
[model]
hidden = 48
blocks = 2
time_dim = 16
[train]
steps = {steps}
batch_size = 128
log_every = 25
checkpoint_every = 0
checkpoint_minutes = 0.0
warmup = 10
"""

# name -> (method, data, prior, steps, extra TOML); each schedule switches phase / updates its
# encoder several times within its steps
RUNS = {
    "sgm": ("sgm", "moons", "gaussian", 300, ""),
    "sgm-ve": ("sgm", "8gaussians", "gaussian", 150, '[reference]\nkind = "ve"\n'),
    "vsdm": ("vsdm", "moons", "gaussian", 300, "[vsdm]\nwarmup = 60\ninterval = 40\npaths = 64\npath_steps = 20\n"),
    "vsdm-diagonal-tv": ("vsdm", "swissroll", "gaussian", 200,
                         '[vsdm]\nencoder = "diagonal"\ntime_varying = true\nwarmup = 50\ninterval = 30\n'
                         "paths = 64\npath_steps = 20\n"),
    "dsb": ("dsb", "moons", "gaussian", 0,
            "[dsb]\niterations = 3\nhalf_steps = 60\nfirst_steps = 90\nnum_steps = 12\ncache_size = 512\n"
            "cache_refresh = 25\n"),
    "dsb-bridge": ("dsb", "moons", "8gaussians", 0,
                   '[reference]\nkind = "brownian"\neps = 0.5\n'
                   "[dsb]\niterations = 3\nhalf_steps = 60\nnum_steps = 10\ncache_size = 512\ncache_refresh = 0\n"),
    "dsb-default-net": ("dsb", "moons", "gaussian", 0,  # DSB's own defaults (128x2, EMA 0.99): model keys unset
                        "[dsb]\niterations = 2\nhalf_steps = 40\nnum_steps = 8\ncache_size = 256\n"),
    "sbfbsde": ("sbfbsde", "moons", "gaussian", 200,
                "[sbfbsde]\nhalf_steps = 40\nnum_steps = 8\ncache_size = 256\ncache_refresh = 20\n"
                "hidden = 32\nblocks = 1\n"),
    "sbfbsde-joint": ("sbfbsde", "moons", "gaussian", 60,
                      '[sbfbsde]\nschedule = "joint"\nfirst_steps = 20\nnum_steps = 6\nhidden = 32\nblocks = 1\n'),
    "sbfbsde-bridge": ("sbfbsde", "moons", "8gaussians", 200,
                       '[reference]\nkind = "brownian"\neps = 0.5\n'
                       "[sbfbsde]\nhalf_steps = 40\nnum_steps = 8\ncache_size = 256\ncache_refresh = 20\n"
                       "hidden = 32\nblocks = 1\n"),
    "dsbm": ("dsbm", "moons", "gaussian", 0,
             "[dsbm]\niterations = 3\nhalf_steps = 60\nnum_steps = 12\ncache_size = 512\ncache_refresh = 25\n"),
    "dsbm-bridge": ("dsbm", "moons", "8gaussians", 0,
                    '[reference]\nkind = "brownian"\neps = 1.0\n'
                    '[dsbm]\ncoupling = "entropic"\niterations = 3\nhalf_steps = 60\nnum_steps = 10\n'
                    "cache_size = 512\ncache_refresh = 0\n"),
    "lightsb": ("lightsb", "moons", "8gaussians", 300,
                '[reference]\nkind = "brownian"\neps = 0.5\n[lightsb]\ncomponents = 8\n'),
    "lightsb-matching": ("lightsb", "moons", "8gaussians", 200,
                         '[reference]\nkind = "brownian"\neps = 0.5\n'
                         '[lightsb]\nobjective = "matching"\ncomponents = 8\n'),
}


def _config_text(method: str, data: str, prior: str, steps: int, extra: str, default_net: bool) -> str:
    common = COMMON.format(steps=steps)
    if default_net:
        common = common.replace("hidden = 48\nblocks = 2\n", "")
    head = f'method = "{method}"\nseed = 11\n[data]\ndata = "{data}"\nprior = "{prior}"\nn_samples = 2000\n'
    text = head + common
    # merge [reference] / [dsb] tables of ``extra`` (TOML forbids a table twice)
    return text + "\n" + extra


def _hashes(path: Path) -> tuple[str, str]:
    from safetensors.torch import load_file

    whole = hashlib.sha256(path.read_bytes()).hexdigest()
    tensors = load_file(str(path))
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return whole, h.hexdigest()


def run_all(names: list[str]) -> dict:
    from sbdiff import fit, load_config

    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            method, data, prior, steps, extra = RUNS[name]
            path = Path(tmp) / f"{name}.toml"
            path.write_text(_config_text(method, data, prior, steps, extra, name.endswith("default-net")))
            cfg, _ = load_config(path)
            t0 = time.monotonic()
            res = fit(cfg, Path(tmp) / name, progress=False)
            whole, tensors = _hashes(Path(tmp) / name / "model.safetensors")
            out[name] = {"file": whole, "tensors": tensors, "steps": res.steps,
                         "seconds": round(time.monotonic() - t0, 1)}
            print(f"{name:18s} steps {res.steps:5d}  file {whole[:16]}  tensors {tensors[:16]}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the hashes here")
    p.add_argument("--compare", help="a JSON written by --json: exit 1 when any row differs")
    p.add_argument("--only", nargs="*", choices=list(RUNS), help="these rows only")
    args = p.parse_args(argv)
    names = args.only or list(RUNS)
    res = run_all(names)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    if args.compare:
        ref = json.loads(Path(args.compare).read_text())
        bad = 0
        print(f"\ncompared with {args.compare}:")
        for name in names:
            if name not in ref:
                print(f"{name:18s} (not in the reference)")
                continue
            same_t = ref[name]["tensors"] == res[name]["tensors"]
            same_f = ref[name]["file"] == res[name]["file"]
            bad += not same_t
            print(f"{name:18s} {'same' if same_t else 'DIFFERENT'} tensors, {'same' if same_f else 'different'} file bytes")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
