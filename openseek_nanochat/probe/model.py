"""A train job's checkpoint, loaded for inference: the builtin GPT with this project's model code, a nanochat-backend
checkpoint with the checkout's own (nanochat.checkpoint_manager.build_model, as nanochat's scripts load theirs).

Both models take token ids (B, T) and give logits (B, T, vocab), or with targets the loss: what sampling and
evaluation need. The tokenizer is read from the run's tokenizer folder in either case (the same files).
"""

import os
import sys

import torch

from openseek_nanochat.probe.spec import Checkpoint
from openseek_nanochat.train import checkpoints
from openseek_nanochat.train import tokenizer as tok


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)


def load(checkpoint: Checkpoint, device: torch.device):
    """(model in eval mode, tokenizer)."""
    tokenizer = tok.load(checkpoint.tokenizer_dir)
    if checkpoint.backend == "nanochat":
        return _load_nanochat(checkpoint, device), tokenizer
    from openseek_nanochat.train.builtin.model import GPT, GPTConfig

    meta = checkpoints.read_meta(checkpoint.checkpoint_dir, checkpoint.step)
    if meta is None:
        raise FileNotFoundError(f"{checkpoint.checkpoint_dir}: no meta of step {checkpoint.step}")
    with torch.device(device):
        model = GPT(GPTConfig(**meta["model_config"]))
    path = os.path.join(checkpoint.checkpoint_dir, checkpoints.model_file(checkpoint.step))
    model.load_state_dict(torch.load(path, map_location=device))
    return model.eval(), tokenizer


def _load_nanochat(checkpoint: Checkpoint, device: torch.device):
    # nanochat finds its tokenizer under NANOCHAT_BASE_DIR: the run dir is that base dir (train/nanochat/rundir.py)
    os.environ["NANOCHAT_BASE_DIR"] = checkpoint.run_dir
    sys.dont_write_bytecode = True  # the checkout is left as it was: no __pycache__ in it
    sys.path.insert(0, checkpoint.nanochat_dir)
    from nanochat.checkpoint_manager import build_model

    model, _, _ = build_model(checkpoint.checkpoint_dir, checkpoint.step, device, "eval")
    return model
