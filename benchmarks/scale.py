"""Training and sampling throughput, as ratios to a plain one-process baseline measured in the same run.

    python benchmarks/scale.py                 # vectors (checkerboard) and digits, CPU rows
    python benchmarks/scale.py --steps 300 --data checkerboard --json /tmp/scale.json

Rows (each a fresh ``sbdiff train`` process, so they run one after another on the same machine):

* ``1 process``            the baseline: one process, torch's default thread count;
* ``DDP 2 x gloo``         ``torchrun --nproc_per_node 2``, one thread per rank, same global batch;
* ``1 process, compile``   ``train.compile = true`` (steady state; the compile time is reported apart);
* ``1 process, bf16``      ``train.precision = "bf16"`` (autocast; meant for GPUs);
* ``cuda`` rows            when a GPU is visible (fp32, bf16).

Training throughput is measured in the steady state: samples per second between the first and the
last log step of ``metrics.jsonl`` (start-up, compilation and the final save excluded). Sampling
throughput is the SDE sampler's (``sample.nfe`` steps) samples per second on the trained EMA model.

``--json PATH`` also writes the run (date, torch, threads, CPU count, GPU, arguments) and one dict per
printed row (every number of the table, plus steps, batch size and network) to PATH, rewritten after
each row so that an interrupted run keeps the rows done.
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
    return {"train_samples_per_s": rate, "first_log_s": first["elapsed_s"], "wall_s": time.monotonic() - start,
            "batch_size": batch}


def _network(cfg, model) -> dict:
    """The trained network: its kind (``model.net``, ``auto`` resolved as the trainer does), size and parameters."""
    m = cfg.model
    kind = m.net if m.net != "auto" else ("unet" if cfg.data.image_shape not in ("none", "auto") else "mlp")
    size = {"mlp": f"{m.hidden}x{m.blocks}", "window": f"{m.window_channels}x{m.window_blocks}",
            "unet": f"{m.unet_channels} channels x ({m.unet_mult}), {m.unet_res_blocks} res blocks"}.get(kind, "")
    return {"net": kind, "size": size, "parameters": sum(p.numel() for p in model.parameters())}


def _sampling(run: Path, device: str, n: int) -> tuple[float, dict]:
    """Sampling samples/s of the run's EMA model, and its network (:func:`_network`)."""
    cfg, model = load_run(run, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    model.sample(min(n, 64), nfe=5, generator=gen, progress=False)  # warm-up
    start = time.monotonic()
    model.sample(n, nfe=cfg.sample.nfe, generator=gen, progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.monotonic() - start), _network(cfg, model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["checkerboard", "digits"])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--skip", nargs="*", default=[],
                   help="row names to skip (compile, bf16, ddp: any part of a row's name, any case)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    args = p.parse_args()
    rows = [("1 process", {}, "cpu", 1, None), ("DDP 2 x gloo", {}, "cpu", 2, 1),
            ("1 process, compile", {"compile": True}, "cpu", 1, None),
            ("1 process, bf16", {"precision": "bf16"}, "cpu", 1, None)]
    if torch.cuda.is_available():
        rows += [("cuda fp32", {}, "cuda", 1, None), ("cuda bf16", {"precision": "bf16"}, "cuda", 1, None)]
    rows = [r for r in rows if not any(s.lower() in r[0].lower() for s in args.skip)]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, GPU: {gpu or 'none'}; {args.steps} steps")
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "gpu": gpu, "args": vars(args), "rows": []}

    def save() -> None:
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=1) + "\n")

    save()
    print("| data | row | train samples/s | ratio | sampling samples/s | ratio | first log (s) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            base_train = base_sample = None
            for i, (name, train, device, ddp, threads) in enumerate(rows):
                out = Path(tmp) / f"{data}-{i}"
                res = _train(data, out, args.steps, train, device, ddp, threads)
                n_sample = args.samples if data != "digits" else args.samples // 4
                sample, network = _sampling(out, device, n_sample)
                base_train = base_train or res["train_samples_per_s"]
                base_sample = base_sample or sample
                print(f"| {data} | {name} | {res['train_samples_per_s']:.0f} | "
                      f"{res['train_samples_per_s'] / base_train:.2f} | {sample:.0f} | {sample / base_sample:.2f} | "
                      f"{res['first_log_s']:.1f} |", flush=True)
                report["rows"].append({
                    "data": data, "row": name, "train_samples_per_s": res["train_samples_per_s"],
                    "train_ratio": res["train_samples_per_s"] / base_train, "sampling_samples_per_s": sample,
                    "sampling_ratio": sample / base_sample, "first_log_s": res["first_log_s"],
                    "process_wall_s": res["wall_s"], "steps": args.steps, "batch_size": res["batch_size"],
                    "network": network, "device": device, "ddp_ranks": ddp, "omp_threads": threads,
                    "train": train, "sampling_n": n_sample})
                save()
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
