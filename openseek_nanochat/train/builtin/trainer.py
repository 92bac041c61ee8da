"""Train the builtin GPT (model.py, optimizers in optim.py) on nanochat shards, one process per device:

    torchrun --standalone --nproc_per_node=N -m openseek_nanochat.train.builtin.trainer \\
        --data-dir SHARDS --tokenizer-dir TOK --run-dir RUN --depth 12 --num-iterations 1000

Flags are named like nanochat's `scripts.base_train` (train/job.py builds them from the spec). Gradients accumulate up
to --total-batch-size tokens per step; the learning rate warms up linearly, holds, then decays linearly to
--final-lr-frac. Validation bits per byte is measured every --eval-every steps, a checkpoint (checkpoints.py's files,
under <run-dir>/checkpoints) written every --save-every steps and at the end. Started again with the same run dir,
training continues from the last complete checkpoint exactly where it stopped: same weights, optimizer state, schedule
position and data. A rank whose torchrun is gone exits (procs.exit_with_parent).

Rank 0 (node 0's first rank, with several nodes) prints nanochat-style step lines and writes <run-dir>/metrics.jsonl,
one object per step: {step, loss, lr, dt_ms, tok_per_sec, mfu, val_bpb} (null where a step has no value; step 0 is
the first evaluation).
With --events it also prints `metric` and (throttled) `progress` events for the worker.
"""

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from openseek_nanochat import events, procs
from openseek_nanochat.atomic import save_atomic, write_atomic, write_json_atomic
from openseek_nanochat.train import checkpoints, nodes
from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.train.builtin.model import GPT, config_for_depth
from openseek_nanochat.train.builtin.optim import setup_optimizers
from openseek_nanochat.train.checkpoints import last_complete_step
from openseek_nanochat.train.dataloader import (
    tokenizing_distributed_data_loader_bos_bestfit,
    tokenizing_distributed_data_loader_with_state_bos_bestfit,
)
from openseek_nanochat.train.spec import TrainSpec

# Dense bf16 peak FLOP/s, for MFU. Order matters: the first entry whose words all appear in the device name wins.
PEAK_FLOPS = [
    (("h200",), 989e12),
    (("h100", "pcie"), 756e12),
    (("h100", "nvl"), 835e12),
    (("h100",), 989e12),
    (("h800",), 989e12),
    (("a100",), 312e12),
    (("l40s",), 362e12),
    (("l4",), 121e12),
    (("4090",), 165e12),
]


def parse_args(argv=None):
    default = {name: field.default for name, field in TrainSpec.model_fields.items()}  # the spec's, declared once
    p = argparse.ArgumentParser(description="Train the builtin GPT (run under torchrun)")
    p.add_argument("--data-dir", required=True, help="nanochat shard dir; the last shard is validation")
    p.add_argument("--tokenizer-dir", required=True, help="holds tokenizer.pkl and token_bytes.pt")
    p.add_argument("--run-dir", required=True, help="checkpoints/ and metrics.jsonl go here; resumes from it")
    p.add_argument("--device-type", default="", help="cuda|cpu (empty: cuda when available)")
    p.add_argument("--depth", type=int, default=default["depth"])
    p.add_argument("--aspect-ratio", type=int, default=default["aspect_ratio"], help="width = depth * aspect_ratio")
    p.add_argument("--head-dim", type=int, default=default["head_dim"])
    p.add_argument("--max-seq-len", type=int, default=default["max_seq_len"])
    p.add_argument("--num-iterations", type=int, required=True)
    p.add_argument("--device-batch-size", type=int, default=default["device_batch_size"])
    p.add_argument("--total-batch-size", type=int, default=-1, help="tokens per step (-1: one micro-batch per rank)")
    p.add_argument("--embedding-lr", type=float, default=default["embedding_lr"])
    p.add_argument("--unembedding-lr", type=float, default=default["unembedding_lr"])
    p.add_argument("--matrix-lr", type=float, default=default["matrix_lr"])
    p.add_argument("--weight-decay", type=float, default=default["weight_decay"])
    p.add_argument("--warmup-steps", type=int, default=default["warmup_steps"])
    p.add_argument("--warmdown-ratio", type=float, default=default["warmdown_ratio"])
    p.add_argument("--final-lr-frac", type=float, default=default["final_lr_frac"])
    p.add_argument("--eval-every", type=int, default=default["eval_every"], help="-1: only at the end")
    p.add_argument("--eval-tokens", type=int, default=default["eval_tokens"])
    p.add_argument("--save-every", type=int, default=default["save_every"], help="-1: only at the end")
    p.add_argument("--seed", type=int, default=default["seed"])
    p.add_argument("--compile", choices=["auto", "on", "off"], default=default["compile"], help="auto: on CUDA")
    p.add_argument("--events", action="store_true", help="print metric/progress events (rank 0)")
    return p.parse_args(argv)


def lr_multiplier(step, num_iterations, warmup_steps, warmdown_ratio, final_lr_frac):
    """nanochat's schedule: linear warmup, flat, linear warmdown to final_lr_frac. `step` counts from 0."""
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def peak_flops(device_name: str) -> float | None:
    name = device_name.lower()
    for words, flops in PEAK_FLOPS:
        if all(w in name for w in words):
            return flops
    return None


# --- checkpoints: meta last, so a checkpoint is complete once its meta exists ---


def save_checkpoint(checkpoint_dir: Path, step, model, optimizers, meta, rank):
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_atomic(checkpoint_dir / checkpoints.model_file(step), lambda p: torch.save(model.state_dict(), p))
    # Optimizer state is saved by every rank (nanochat's layout, ready for optimizers that shard their state).
    state = [opt.state_dict() for opt in optimizers]
    save_atomic(checkpoint_dir / checkpoints.optim_file(step, rank), lambda p: torch.save(state, p))
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        write_json_atomic(checkpoint_dir / checkpoints.meta_file(step), meta)
    if dist.is_initialized():
        dist.barrier()


def gather_objects(obj, world_size):
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes, autocast):
    """Bits per byte of the targets: summed loss in nats over summed UTF-8 bytes, special tokens (0 bytes) left out.

    Unlike mean loss per token, this does not depend on the tokenizer, so runs with different vocabularies compare.
    """
    device = token_bytes.device
    nats = torch.zeros((), dtype=torch.float32, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    for _ in range(steps):
        x, y = next(batches)
        with autocast:
            loss = model(x, y, loss_reduction="none").view(-1)
        y_bytes = token_bytes[y.view(-1)]
        nats += (loss * (y_bytes > 0)).sum()
        nbytes += y_bytes.sum()
    if dist.is_initialized():
        dist.all_reduce(nats)
        dist.all_reduce(nbytes)
    return nats.item() / (math.log(2) * nbytes.item()) if nbytes.item() else float("inf")


def eval_steps(tokens: int, B: int, T: int, world_size: int) -> int:
    """Batches per evaluation: `tokens` over all ranks, at least one batch."""
    return max(1, tokens // (B * T * world_size))


def validation_bpb(model, tokenizer, token_bytes, B, T, steps, data_dir, device, autocast):
    """Bits per byte on the first `steps` batches of the validation shard, each rank on its own row groups: what the
    trainer logs as val_bpb, and what an eval job measures of a checkpoint (probe/evaluate.py)."""
    loader = tokenizing_distributed_data_loader_bos_bestfit(tokenizer, B, T, "val", device=device, data_dir=data_dir)
    was_training = model.training
    model.eval()
    try:
        return evaluate_bpb(model, loader, steps, token_bytes, autocast)
    finally:
        model.train(was_training)
        loader.close()


def uses_bf16(device_type: str) -> bool:
    return device_type == "cuda" and torch.cuda.is_bf16_supported()


def autocast_for(device_type: str):
    """bf16 autocast on a CUDA device that has it, else a context that changes nothing."""
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=uses_bf16(device_type))


class MetricsLog:
    """metrics.jsonl, append-only; on resume, records after the checkpoint's step are dropped (they get redone)."""

    FIELDS = ("step", "loss", "lr", "dt_ms", "tok_per_sec", "mfu", "val_bpb")

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        kept = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if record.get("step", math.inf) <= resume_step:
                    kept.append(line + "\n")
        write_atomic(path, lambda f: f.write("".join(kept).encode()))
        self.file = open(path, "a")

    def write(self, **fields):
        record = {k: fields.get(k) for k in self.FIELDS}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        return record


def main(argv=None):
    args = parse_args(argv)
    procs.exit_with_parent()

    # --- processes and devices ---
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device_type = args.device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device(device_type)
    if world_size > 1:
        on_cuda = device_type == "cuda"
        dist.init_process_group(backend="nccl" if on_cuda else "gloo", device_id=device if on_cuda else None)
    # The rank that prints and writes metrics.jsonl: node 0's first, so that the job's log (node 0's worker's) has
    # them whichever node c10d made global rank 0; global rank 0 writes the checkpoints (train/nodes.py).
    master = local_rank == 0 and nodes.this_node() == 0
    log = print if master else (lambda *a, **k: None)
    use_bf16 = uses_bf16(device_type)
    autocast = autocast_for(device_type)
    peak = peak_flops(torch.cuda.get_device_name(device)) if device_type == "cuda" else None
    torch.manual_seed(args.seed)

    # --- tokenizer, model, optimizers ---
    tokenizer = tok.load(args.tokenizer_dir)
    token_bytes = tok.load_token_bytes(args.tokenizer_dir, device=device)
    vocab_size = tokenizer.get_vocab_size()
    config = config_for_depth(args.depth, vocab_size, args.max_seq_len, args.aspect_ratio, args.head_dim)
    with torch.device(device):
        model = GPT(config)
    model.init_weights()
    optimizers = setup_optimizers(model, args.embedding_lr, args.unembedding_lr, args.matrix_lr, args.weight_decay)
    flops_per_token = model.estimate_flops()
    log(
        f"model: {asdict(config)} | {model.num_params():,} parameters | {flops_per_token:.3e} FLOPs/token | "
        f"{world_size} rank(s) on {device_type}{' (bf16)' if use_bf16 else ''}"
    )

    tokens_per_micro_batch = args.device_batch_size * args.max_seq_len * world_size
    total_batch_size = tokens_per_micro_batch if args.total_batch_size == -1 else args.total_batch_size
    if total_batch_size % tokens_per_micro_batch:
        raise SystemExit(
            f"error: total_batch_size {total_batch_size} is not a multiple of device_batch_size x max_seq_len x ranks "
            f"= {args.device_batch_size} x {args.max_seq_len} x {world_size} = {tokens_per_micro_batch}"
        )
    grad_accum_steps = total_batch_size // tokens_per_micro_batch
    num_iterations = args.num_iterations
    log(f"{total_batch_size:,} tokens per step = {grad_accum_steps} micro-batch(es) of {tokens_per_micro_batch:,}")

    # --- resume ---
    run_dir = Path(args.run_dir)
    checkpoint_dir = run_dir / checkpoints.SUBDIR
    resume_step = last_complete_step(checkpoint_dir, world_size)
    step, val_bpb, min_val_bpb, total_time, loader_state = 0, None, math.inf, 0.0, None
    if resume_step is not None:
        model.load_state_dict(torch.load(checkpoint_dir / checkpoints.model_file(resume_step), map_location=device))
        saved = torch.load(checkpoint_dir / checkpoints.optim_file(resume_step, rank), map_location=device)
        for opt, state in zip(optimizers, saved):
            opt.load_state_dict(state)
        meta = json.loads((checkpoint_dir / checkpoints.meta_file(resume_step)).read_text())
        step, val_bpb = meta["step"], meta["val_bpb"]
        min_val_bpb = meta["loop_state"]["min_val_bpb"] or math.inf  # None: no evaluation yet
        total_time = meta["loop_state"]["total_training_time"]
        states = meta.get("dataloader_state_dicts") or []
        loader_state = states[rank] if len(states) == world_size else meta["dataloader_state_dict"]
        log(f"resuming from step {step} ({checkpoint_dir})")
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step if resume_step is not None else -1)

    orig_model = model
    compile_model = args.compile == "on" or (args.compile == "auto" and device_type == "cuda")
    if compile_model:
        model = torch.compile(model, dynamic=False)
    if world_size > 1:
        device_ids = [local_rank] if device_type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # --- data ---
    B, T = args.device_batch_size, args.max_seq_len
    train_loader = tokenizing_distributed_data_loader_with_state_bos_bestfit(
        tokenizer, B, T, "train", device=device, resume_state_dict=loader_state, data_dir=args.data_dir
    )
    steps_per_eval = eval_steps(args.eval_tokens, B, T, world_size)

    def run_eval():
        return validation_bpb(orig_model, tokenizer, token_bytes, B, T, steps_per_eval, args.data_dir, device, autocast)

    # `loader_state` always resumes to the batch in hand (x, y): the state that came with the batch before it.
    x, y, next_state = next(train_loader)

    def checkpoint():
        states = gather_objects(loader_state, world_size)
        meta = {
            "step": step,
            "val_bpb": val_bpb,
            "model_config": asdict(config),
            "user_config": vars(args),
            "device_batch_size": B,
            "max_seq_len": T,
            "total_batch_size": total_batch_size,
            "world_size": world_size,
            "dataloader_state_dict": states[0],
            "dataloader_state_dicts": states,
            "loop_state": {
                "min_val_bpb": min_val_bpb if min_val_bpb < math.inf else None,
                "total_training_time": total_time,
            },
        }
        save_checkpoint(checkpoint_dir, step, orig_model, optimizers, meta, rank)
        log(f"saved checkpoint {checkpoint_dir} step {step}")

    def report(record):
        if args.events:
            events.emit("metric", **record)

    throttle = events.Throttle(2.0)
    if step == 0 and args.eval_every > 0:
        val_bpb = run_eval()
        min_val_bpb = val_bpb
        log(f"Step {step:05d} | Validation bpb: {val_bpb:.6f}")
        if master:
            report(metrics.write(step=0, val_bpb=val_bpb))

    first_step = step
    while step < num_iterations:
        if device_type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        lrm = lr_multiplier(step, num_iterations, args.warmup_steps, args.warmdown_ratio, args.final_lr_frac)
        loss_sum = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            # DDP all-reduces gradients after the last micro-batch only
            last_micro = micro_step == grad_accum_steps - 1
            with model.no_sync() if world_size > 1 and not last_micro else nullcontext():
                with autocast:
                    loss = model(x, y)
                loss_sum += loss.detach()
                (loss / grad_accum_steps).backward()
            loader_state = next_state
            x, y, next_state = next(train_loader)  # the next batch, while the device finishes this one
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
            opt.step()
        orig_model.zero_grad(set_to_none=True)
        if world_size > 1:
            dist.all_reduce(loss_sum)
        train_loss = loss_sum.item() / (grad_accum_steps * world_size)
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        step += 1
        if step > first_step + 1:
            total_time += dt  # the first step of a process pays for compilation and warm-up
        last_step = step == num_iterations

        tok_per_sec = total_batch_size / dt
        mfu = 100 * flops_per_token * tok_per_sec / (peak * world_size) if peak else None
        step_val_bpb = None
        if last_step or (args.eval_every > 0 and step % args.eval_every == 0):
            val_bpb = step_val_bpb = run_eval()
            min_val_bpb = min(min_val_bpb, val_bpb)
        state_str = f"{next_state['epoch']} pq: {next_state['pq_idx']} rg: {next_state['rg_idx']}"
        mfu_str = f"{mfu:.2f}" if mfu is not None else "n/a"
        log(
            f"step {step:05d}/{num_iterations:05d} ({100 * step / num_iterations:.2f}%) | loss: {train_loss:.6f} | "
            f"lrm: {lrm:.2f} | dt: {dt * 1000:.2f}ms | tok/sec: {int(tok_per_sec):,} | bf16_mfu: {mfu_str} | "
            f"epoch: {state_str} | total time: {total_time / 60:.2f}m"
        )
        if step_val_bpb is not None:
            log(f"Step {step:05d} | Validation bpb: {step_val_bpb:.6f}")
        if master:
            lr = optimizers[-1].param_groups[0]["lr"]  # the matrix rate: the one most of the weights move with
            report(
                metrics.write(
                    step=step,
                    loss=train_loss,
                    lr=lr,
                    dt_ms=dt * 1000,
                    tok_per_sec=tok_per_sec,
                    mfu=mfu,
                    val_bpb=step_val_bpb,
                )
            )
            if args.events and (throttle.ready() or last_step or step_val_bpb is not None):
                timed_steps = step - first_step - 1
                eta = (num_iterations - step) * total_time / timed_steps if timed_steps > 0 else None
                events.emit(
                    "progress",
                    step=step,
                    num_iterations=num_iterations,
                    loss=train_loss,
                    tok_per_sec=tok_per_sec,
                    val_bpb=val_bpb,
                    eta_s=eta,
                    fraction=step / num_iterations,
                )
        if last_step or (args.save_every > 0 and step % args.save_every == 0):
            checkpoint()

    if step == first_step and master:
        log(f"nothing to do: the run is already at step {step}/{num_iterations}")
    if min_val_bpb < math.inf:
        log(f"Minimum validation bpb: {min_val_bpb:.6f}")
    if device_type == "cuda":
        log(f"Peak memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    train_loader.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
