"""Eval job: bits per byte of a checkpoint on a dataset's validation shard (`openseek-nanochat eval SPEC.json`).

`run` starts torchrun with as many ranks as the training had, each running `main` here: every rank reads its own row
groups of the validation shard with the training's batch shape, through the trainer's own evaluation
(trainer.validation_bpb). So on the training's dataset with its eval_tokens, the number is the training's val_bpb.

    torchrun --standalone --nproc_per_node=N -m openseek_nanochat.probe.evaluate --spec EVAL.json --out RESULT.json
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from openseek_nanochat import procs
from openseek_nanochat.atomic import write_json_atomic
from openseek_nanochat.probe.spec import EvalSpec
from openseek_nanochat.train.job import error_reason


def run(spec: EvalSpec, emit) -> dict:
    checkpoint = spec.checkpoint
    emit("progress", fraction=0.0, message=f"evaluating step {checkpoint.step} on {checkpoint.world_size} rank(s)")
    with tempfile.TemporaryDirectory(prefix="openseek-eval-") as tmp:
        spec_file, out = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(spec.model_dump_json())
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={checkpoint.world_size}", "-m", "openseek_nanochat.probe.evaluate",
            f"--spec={spec_file}", f"--out={out}",
        ]  # fmt: skip
        rc, error = procs.stream(cmd, failure=error_reason)
        if rc != 0:
            raise RuntimeError(f"evaluation failed (torchrun exit code {rc})" + (f": {error}" if error else ""))
        measured = json.loads(out.read_text())
    result = {
        "train_job": spec.train_job,
        "step": checkpoint.step,
        "dataset": spec.dataset,
        "tokens": spec.tokens,
        "world_size": checkpoint.world_size,
        **measured,
    }
    emit("progress", fraction=1.0, message=f"val_bpb {measured['val_bpb']:.6f}", val_bpb=measured["val_bpb"])
    emit("result", **result)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Bits per byte of a checkpoint (run under torchrun)")
    parser.add_argument("--spec", required=True, help="a prepared EvalSpec JSON file")
    parser.add_argument("--out", required=True, help="rank 0 writes {val_bpb, batches} here")
    args = parser.parse_args(argv)
    procs.exit_with_parent()

    import torch
    import torch.distributed as dist

    from openseek_nanochat.probe import model as checkpoint_model
    from openseek_nanochat.train import tokenizer as tok
    from openseek_nanochat.train.builtin import trainer

    spec = EvalSpec.model_validate_json(Path(args.spec).read_text())
    checkpoint = spec.checkpoint
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = checkpoint_model.pick_device(spec.device, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer evaluates
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1:
        on_cuda = device.type == "cuda"
        dist.init_process_group(backend="nccl" if on_cuda else "gloo", device_id=device if on_cuda else None)
    model, tokenizer = checkpoint_model.load(checkpoint, device)
    token_bytes = tok.load_token_bytes(checkpoint.tokenizer_dir, device=device)
    B, T = checkpoint.device_batch_size, checkpoint.max_seq_len
    batches = trainer.eval_steps(spec.tokens, B, T, world_size)
    autocast = trainer.autocast_for(device.type)
    bpb = trainer.validation_bpb(model, tokenizer, token_bytes, B, T, batches, spec.dataset, device, autocast)
    if rank == 0:
        print(f"step {checkpoint.step} | {batches} batch(es) of {B}x{T} on {world_size} rank(s) | val_bpb: {bpb:.6f}")
        write_json_atomic(Path(args.out), {"val_bpb": bpb, "batches": batches})
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
