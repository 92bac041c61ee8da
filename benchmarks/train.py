"""Builtin trainer throughput: tokens/s and MFU of real training steps (loader, forward, backward, optimizers).

    .venv/bin/python benchmarks/train.py                                  # CPU: a small model
    .venv/bin/python benchmarks/train.py --device cuda --depth 12 --max-seq-len 2048 --device-batch-size 32
    .venv/bin/python benchmarks/train.py --device cuda --depth 20 --max-seq-len 2048 --device-batch-size 32

One process, the same code path as a torchrun rank. Data and tokenizer are built from ../shared/data
as in benchmarks/loader.py. Reports the median over the steps after the first `--warmup` (compilation, allocator).
MFU is model FLOPs (6 per weight per token plus attention) over the GPU's dense bf16 peak; none on CPU.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import REPO, make_base_dir  # noqa: E402

sys.path.insert(0, str(REPO))
import torch  # noqa: E402

from openseek_nanochat.train.builtin import trainer as train  # noqa: E402
from openseek_nanochat.train.builtin.model import GPT, config_for_depth  # noqa: E402
from openseek_nanochat.train.nanochat import layout  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--device-batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    parser.add_argument(
        "--vocab-size",
        type=int,
        help="default: nanochat's 32,768 on a GPU; 8,192 on CPU, where the "
        "output layer of a small model would take nearly all the time",
    )
    args = parser.parse_args()
    vocab_size = args.vocab_size or (8192 if args.device == "cpu" else 32768)

    with tempfile.TemporaryDirectory() as tmp:
        base = make_base_dir(Path(tmp), "mixed", vocab_size)
        run_dir = Path(tmp) / "run"
        train.main(
            [
                f"--data-dir={base / layout.DATA_SUBDIR}",
                f"--tokenizer-dir={base / layout.TOKENIZER_SUBDIR}",
                f"--run-dir={run_dir}",
                f"--device-type={args.device}",
                f"--depth={args.depth}",
                f"--max-seq-len={args.max_seq_len}",
                f"--device-batch-size={args.device_batch_size}",
                f"--num-iterations={args.steps}",
                "--eval-every=-1",
                f"--eval-tokens={args.device_batch_size * args.max_seq_len}",
                f"--warmup-steps={args.warmup}",
                f"--compile={args.compile}",
            ]
        )
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["loss"] is not None and r["step"] > args.warmup]
    tok_per_sec = statistics.median(r["tok_per_sec"] for r in timed)
    mfus = [r["mfu"] for r in timed if r["mfu"] is not None]
    mfu = f"{statistics.median(mfus):.1f}%" if mfus else "n/a (no GPU peak to compare with)"
    with torch.device("meta"):
        flops_per_token = GPT(config_for_depth(args.depth, vocab_size, args.max_seq_len)).estimate_flops()
    print(
        f"\ndepth {args.depth}, vocab {vocab_size:,}, {args.device_batch_size} x {args.max_seq_len} tokens per step "
        f"on {args.device}: {tok_per_sec:,.0f} tokens/s = {flops_per_token * tok_per_sec / 1e9:,.1f} GFLOP/s of model "
        f"compute, MFU {mfu} (median of {len(timed)} steps)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
