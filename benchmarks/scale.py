"""Training and sampling throughput, as ratios to a plain one-process baseline measured in the same run.

    python benchmarks/throughput.py                 # vectors (checkerboard) and digits, CPU rows
    python benchmarks/throughput.py --steps 300 --data checkerboard

Rows (each a fresh ``sbdiff train`` process, so they run one after another on the same machine):

* ``1 process``            the baseline: one process, torch's default thread count;
* ``DDP 2 x gloo``         ``torchrun --nproc_per_node 2``, one thread per rank, same global batch;
* ``1 process, compile``   ``train.compile = true`` (steady state; the compile time is reported apart);
* ``1 process, bf16``      ``train.precision = "bf16"`` (autocast; meant for GPUs);
* ``cuda`` rows            when a GPU is visible (fp32, bf16).

Training throughput is measured in the steady state: samples per second between the first and the
last log step of ``metrics.jsonl`` (start-up, compilation and the final save excluded). Sampling
throughput is the SDE sampler's (``sample.nfe`` steps) samples per second on the trained EMA model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sbdiff.train import load_run


def _train(data: str, out: Path, steps: int, train: dict, device: str, ddp: int, threads: int | None) -> dict:
    cfg = out.with_suffix(".toml")
    lines = ["[train]", f"steps = {steps}", f"log_every = {max(steps // 10, 1)}", "checkpoint_every = 0",
             "checkpoint_minutes = 0.0"] + [f"{k} = {json.dumps(v)}" for k, v in train.items()]
    cfg.write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ddp)] \
        if ddp > 1 else [sys.executable]
    cmd = launcher + ["-m", "sbdiff.cli", "train", "--data", data, "--config", str(cfg), "--out", str(out),
                      "--device", device, "--quiet"]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    batch = load_run(out)[0].train.batch_size
    first, last = rows[0], rows[-1]
    rate = (last["step"] - first["step"]) * batch / (last["elapsed_s"] - first["elapsed_s"])
    return {"train_samples_per_s": rate, "first_log_s": first["elapsed_s"], "wall_s": time.monotonic() - start}


def _sampling(run: Path, device: str, n: int) -> float:
    cfg, model = load_run(run, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    model.sample(min(n, 64), nfe=5, generator=gen, progress=False)  # warm-up
    start = time.monotonic()
    model.sample(n, nfe=cfg.sample.nfe, generator=gen, progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.monotonic() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["checkerboard", "digits"])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--skip", nargs="*", default=[], help="row names to skip (compile, bf16, ddp)")
    args = p.parse_args()
    rows = [("1 process", {}, "cpu", 1, None), ("DDP 2 x gloo", {}, "cpu", 2, 1),
            ("1 process, compile", {"compile": True}, "cpu", 1, None),
            ("1 process, bf16", {"precision": "bf16"}, "cpu", 1, None)]
    if torch.cuda.is_available():
        rows += [("cuda fp32", {}, "cuda", 1, None), ("cuda bf16", {"precision": "bf16"}, "cuda", 1, None)]
    rows = [r for r in rows if not any(s in r[0] for s in args.skip)]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}; {args.steps} steps")
    print("| data | row | train samples/s | ratio | sampling samples/s | ratio | first log (s) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            base_train = base_sample = None
            for i, (name, train, device, ddp, threads) in enumerate(rows):
                out = Path(tmp) / f"{data}-{i}"
                res = _train(data, out, args.steps, train, device, ddp, threads)
                sample = _sampling(out, device, args.samples if data != "digits" else args.samples // 4)
                base_train = base_train or res["train_samples_per_s"]
                base_sample = base_sample or sample
                print(f"| {data} | {name} | {res['train_samples_per_s']:.0f} | "
                      f"{res['train_samples_per_s'] / base_train:.2f} | {sample:.0f} | {sample / base_sample:.2f} | "
                      f"{res['first_log_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
