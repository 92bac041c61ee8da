"""The GPU check: one command, one table, under 8 minutes on one H100/H200.

    .venv/bin/python benchmarks/gpu_check.py                          # CUDA: the runs below at full size
    NANOCHAT_DIR=~/nanochat .venv/bin/python benchmarks/gpu_check.py  # ... and nanochat's base_train beside ours
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny      # the same steps, tiny, to check the script

Runs, each a real `torchrun` of one rank on the same shards and tokenizer (built from ../shared/data as in
benchmarks/loader.py, nanochat's 32,768-token vocabulary):
- the builtin trainer at depth 12 and 20, bf16, torch.compile, max_seq_len 2048: tok/s and MFU (medians after the
  warm-up steps), peak memory;
- with NANOCHAT_DIR, nanochat's base_train at depth 12 with its own loader and with ours (the nanochat backend's
  `loader: openseek`): tok/s, MFU; the first 20 losses of every run side by side;
- a checkpoint, then a resume: the builtin trainer at depth 12 saves at step K and runs K+1; started again from the
  step-K checkpoint, it must give the same loss at step K+1.
"""

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import REPO, make_base_dir  # noqa: E402

sys.path.insert(0, str(REPO))
from openseek_nanochat.train import checkpoints  # noqa: E402
from openseek_nanochat.train.nanochat import layout  # noqa: E402
from openseek_nanochat.train.spec import TrainSpec  # noqa: E402

LOSSES = 20  # losses shown side by side
RUN_TIMEOUT_S = 300

FULL = {"depths": (12, 20), "max_seq_len": 2048, "device_batch_size": 32, "vocab": 32768, "steps": 30, "warmup": 5}
# --tiny: the same runs at a size a CPU does in seconds (depths 2 and 3 stand for 12 and 20).
TINY = {"depths": (2, 3), "max_seq_len": 128, "device_batch_size": 4, "vocab": 1024, "steps": LOSSES, "warmup": 3}


def torchrun(module_args: list[str], env: dict | None = None, cwd: Path | None = None) -> str:
    """One rank under torchrun, its output returned (and shown on failure)."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *module_args]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return done.stdout + done.stderr


def builtin_flags(base: Path, run_dir: Path, depth: int, size: dict, device: str, steps: int, **extra) -> list[str]:
    flags = {
        "--data-dir": base / layout.DATA_SUBDIR,
        "--tokenizer-dir": base / layout.TOKENIZER_SUBDIR,
        "--run-dir": run_dir,
        "--device-type": device,
        "--depth": depth,
        "--max-seq-len": size["max_seq_len"],
        "--device-batch-size": size["device_batch_size"],
        "--num-iterations": steps,
        "--eval-every": -1,
        "--eval-tokens": size["device_batch_size"] * size["max_seq_len"],
        "--warmup-steps": size["warmup"],
        "--compile": "auto",
        **extra,
    }
    if size is TINY:
        flags["--head-dim"] = 64
    return ["-m", "openseek_nanochat.train.builtin.trainer", *(f"{k}={v}" for k, v in flags.items())]


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(records: list[dict], warmup: int, peak: str) -> dict:
    steps = [r for r in records if r.get("loss") is not None]
    timed = [r for r in steps if r["step"] > warmup] or steps
    mfus = [r["mfu"] for r in timed if r.get("mfu") is not None]
    return {
        "tok/s": f"{statistics.median(r['tok_per_sec'] for r in timed):,.0f}",
        "MFU": f"{statistics.median(mfus):.1f}%" if mfus else "n/a",
        "peak memory": peak,
        "losses": [r["loss"] for r in steps[:LOSSES]],
    }


def peak_memory(output: str, device: str, rss_before: int) -> str:
    """CUDA: what the trainer printed; CPU: the largest resident set of a child process so far (kB on Linux)."""
    if device == "cuda":
        found = re.findall(r"Peak memory: (\d+) MiB", output)
        return f"{int(found[-1]):,} MiB" if found else "?"
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return f"{rss / 1024:,.0f} MiB RSS" + (" (max so far)" if rss == rss_before else "")


def run_builtin(base: Path, work: Path, depth: int, size: dict, device: str) -> dict:
    run_dir = work / f"builtin-d{depth}"
    rss_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    output = torchrun(builtin_flags(base, run_dir, depth, size, device, size["steps"]))
    return summary(metrics_of(run_dir), size["warmup"], peak_memory(output, device, rss_before))


def run_nanochat(base: Path, work: Path, depth: int, size: dict, device: str, loader: str) -> dict:
    """The nanochat backend's own run (command, environment, output parsing), events collected instead of printed."""
    from openseek_nanochat.train.nanochat import run as nanochat

    spec = TrainSpec(
        dataset=str(base / layout.DATA_SUBDIR),
        backend="nanochat",
        tokenizer={"path": str(base / layout.TOKENIZER_SUBDIR)},
        depth=depth,
        max_seq_len=size["max_seq_len"],
        device_batch_size=size["device_batch_size"],
        num_iterations=size["steps"],
        eval_every=-1,
        eval_tokens=size["device_batch_size"] * size["max_seq_len"],
        warmup_steps=size["warmup"],
        device=device,
        seed=42,
        nanochat_dir=os.environ["NANOCHAT_DIR"],
        loader=loader,
        extra_args=["--sample-every=-1"],
        **({"head_dim": 64} if size is TINY else {}),
    )
    records = []

    def collect(kind: str, **fields) -> None:
        if kind == "metric":
            records.append(fields)

    nanochat.run(spec, work / f"nanochat-{loader}", emit=collect)
    return summary(records, size["warmup"], "n/a")


def resume_check(base: Path, work: Path, depth: int, size: dict, device: str) -> dict:
    """Save at step K, run K+1; delete K+1's checkpoint, start again: the loss at step K+1 must be the same."""
    run_dir, k = work / "resume", 3
    flags = builtin_flags(base, run_dir, depth, size, device, k + 1, **{"--save-every": k, "--compile": "off"})
    torchrun(flags)
    uninterrupted = metrics_of(run_dir)[-1]["loss"]
    for name in checkpoints.step_files(k + 1, world_size=1):
        (run_dir / checkpoints.SUBDIR / name).unlink()
    output = torchrun(flags)
    assert f"resuming from step {k}" in output, output[-2000:]
    resumed = metrics_of(run_dir)[-1]["loss"]
    same = abs(resumed - uninterrupted) <= 1e-6 * max(1.0, abs(uninterrupted))
    return {"step": k + 1, "uninterrupted": uninterrupted, "resumed": resumed, "same": same}


def table(columns: dict[str, dict], resume: dict, seconds: float, title: str) -> str:
    names = list(columns)
    rows = [["", *names]]
    for field in ("tok/s", "MFU", "peak memory"):
        rows.append([field, *(columns[n].get(field, "-") for n in names)])
    for i in range(LOSSES):
        cells = []
        for n in names:
            losses = columns[n].get("losses") or []
            cells.append(f"{losses[i]:.4f}" if i < len(losses) and losses[i] is not None else "-")
        rows.append([f"loss {i + 1}", *cells])
    verdict = "same" if resume["same"] else f"DIFFERENT by {resume['resumed'] - resume['uninterrupted']:+.2e}"
    resume_line = (
        f"checkpoint at step {resume['step'] - 1} -> resume: step {resume['step']} loss "
        f"{resume['uninterrupted']:.6f} uninterrupted, {resume['resumed']:.6f} resumed: {verdict}"
    )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(str(cell).rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join([title, *lines, resume_line, f"({seconds:.0f} s in all)"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and vocabulary: checks the script, fast")
    parser.add_argument("--keep", type=Path, help="build and keep the data and runs here (default: a temp dir)")
    args = parser.parse_args()
    size = TINY if args.tiny else FULL
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: run with --device cpu --tiny to check the script")
    started = time.monotonic()
    work = args.keep or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        print(f"building shards and a {size['vocab']:,}-token tokenizer in {work} ...", flush=True)
        base = make_base_dir(work / "base", "mixed", size["vocab"])
        columns: dict[str, dict] = {}
        precision = "bf16, compile" if args.device == "cuda" else "fp32, no compile"
        for depth in size["depths"]:
            print(f"builtin trainer, depth {depth} ...", flush=True)
            columns[f"builtin d{depth}"] = run_builtin(base, work, depth, size, args.device)
        if os.environ.get("NANOCHAT_DIR"):
            for loader in ("nanochat", "openseek"):
                print(f"nanochat base_train, depth {size['depths'][0]}, loader {loader} ...", flush=True)
                name = f"nanochat d{size['depths'][0]} ({'own' if loader == 'nanochat' else 'our'} loader)"
                columns[name] = run_nanochat(base, work, size["depths"][0], size, args.device, loader)
        else:
            columns["nanochat"] = {"tok/s": "NANOCHAT_DIR not set"}
        print("checkpoint and resume ...", flush=True)
        resume = resume_check(base, work, size["depths"][0], size, args.device)
        title = (
            f"\nGPU check on {args.device}{' (tiny)' if args.tiny else ''}: max_seq_len {size['max_seq_len']}, "
            f"{size['device_batch_size']} rows a step, vocab {size['vocab']:,}, {precision}"
        )
        print(table(columns, resume, time.monotonic() - started, title))
        return 0 if resume["same"] else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
