"""Cost of crash-safe checkpoints for the default model (MLP 256×3, batch 512, 2-D data).

1. One checkpoint of the full training state (model, EMA, Adam moments, scheduler, RNG states):
   file size, and the median time of ``write_checkpoint`` (temp file + fsync + rename) and of
   ``read_checkpoint`` over ``--repeats`` calls.
2. Training with a checkpoint every K steps (K = 0: only the final one), ``--steps`` steps each
   on the checkerboard, interleaved over ``--rounds`` rounds: ms per step, and the share of the
   training time spent writing checkpoints (timed inside the same run, so robust to machine load).

Usage: ``python benchmarks/scripts/checkpoint_overhead.py [--steps 400] [--rounds 3] [--out DIR] [--json PATH]``
(``--json``: also write the numbers to PATH).
Run it alone on the machine: the throughput numbers are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sbdiff.checkpoint import capture_rng, read_checkpoint, write_checkpoint
from sbdiff.config import Config
from sbdiff.data import load_data
from sbdiff.methods import make_method
from sbdiff.nets import make_ema
from sbdiff.train import fit


def one_checkpoint(out: Path, repeats: int) -> dict:
    cfg = Config().validate()
    data = load_data("checkerboard", 2000, 0)
    method = make_method(cfg)
    model = method.build(data)
    opt = torch.optim.Adam(method.trainable(model), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ema = make_ema(model, cfg.train.ema_decay)
    gen = torch.Generator().manual_seed(0)
    x = model.to_model(torch.as_tensor(data[:512], dtype=torch.float32))
    loss = method.losses(model, x, gen)["loss"]
    loss.backward()
    opt.step(), sched.step(), ema.update_parameters(model)  # Adam moments exist
    path = out / "checkpoint.safetensors"
    writes, reads = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        write_checkpoint(path, model=model, ema=ema, meta={"step": 1},
                         state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "method": {},
                                "rng": capture_rng(gen)})
        writes.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        read_checkpoint(path)
        reads.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.parameters())
    return {"params": n_params, "bytes": path.stat().st_size, "write_ms": 1e3 * statistics.median(writes),
            "read_ms": 1e3 * statistics.median(reads)}


def throughput(out: Path, steps: int, rounds: int, every: list[int]) -> dict[int, tuple[float, float]]:
    """Per K: (median ms per training step, median share of training time spent writing checkpoints).
    The share is measured inside the same runs, so it holds up on a loaded machine where the
    absolute ms/step does not."""
    import sbdiff.train as train

    spent = [0.0]
    write = train.write_checkpoint

    def timed(*args, **kw):
        t0 = time.perf_counter()
        write(*args, **kw)
        spent[0] += time.perf_counter() - t0

    train.write_checkpoint = timed
    per_step: dict[int, list[float]] = {k: [] for k in every}
    share: dict[int, list[float]] = {k: [] for k in every}
    try:
        for r in range(rounds):
            for k in every:
                cfg = Config()
                cfg.train.steps, cfg.train.log_every = steps, 100
                cfg.train.checkpoint_every, cfg.train.checkpoint_minutes = k, 0.0
                spent[0] = 0.0
                res = fit(cfg, out / f"run-{k}-{r}", data=load_data("checkerboard", 50_000, 0), progress=False)
                per_step[k].append(1e3 * res.seconds / res.steps)
                share[k].append(spent[0] / res.seconds)
    finally:
        train.write_checkpoint = write
    return {k: (statistics.median(per_step[k]), statistics.median(share[k])) for k in every}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--every", type=int, nargs="+", default=[0, 1000, 100, 10])
    p.add_argument("--out", help="directory for the runs (default: a temporary one)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        c = one_checkpoint(out, args.repeats)
        print(f"default model: {c['params']} parameters; checkpoint {c['bytes'] / 2**20:.2f} MiB, "
              f"write {c['write_ms']:.1f} ms, read {c['read_ms']:.1f} ms (median of {args.repeats}); "
              f"torch threads {torch.get_num_threads()}")
        ms = throughput(out, args.steps, args.rounds, args.every)
        print("| checkpoint_every | ms/step | share of training time in checkpoint writes |\n|---|---|---|")
        for k, (v, f) in ms.items():
            print(f"| {k or 'end only'} | {v:.2f} | {100 * f:.2f} % |")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "args": vars(args),
            "checkpoint": {"parameters": c["params"], "size_mib": c["bytes"] / 2**20, "write_ms": c["write_ms"],
                           "read_ms": c["read_ms"]},
            "rows": [{"checkpoint_every": k, "ms_per_step": v, "share_in_writes": f} for k, (v, f) in ms.items()]},
            indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
