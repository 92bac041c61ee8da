"""The builtin GPT's optimizers: Muon for every matrix in the blocks, AdamW for the embedding and the head.

Muon moves a weight matrix along the orthogonalized momentum (every direction at the same rate), nanochat's choice for
the matrices; the embeddings and the head keep AdamW, with the betas and epsilon nanochat uses.
"""

import torch

from openseek_nanochat.train.builtin.model import GPT


def setup_optimizers(model: GPT, embedding_lr=0.3, unembedding_lr=0.008, matrix_lr=0.02, weight_decay=0.0):
    """AdamW for the embedding and the head (their rates scaled by 1/sqrt(width/768), as nanochat tunes them at
    width 768), Muon for every matrix in the blocks. Each group keeps `initial_lr` for the schedule."""
    scale = (model.config.n_embd / 768) ** -0.5
    fused = model.wte.weight.device.type == "cuda"
    adamw = torch.optim.AdamW(
        [
            {"params": [model.wte.weight], "lr": embedding_lr * scale},
            {"params": [model.lm_head.weight], "lr": unembedding_lr * scale},
        ],
        betas=(0.8, 0.95),
        eps=1e-10,
        weight_decay=0.0,
        fused=fused,
    )
    muon = Muon(list(model.blocks.parameters()), lr=matrix_lr, weight_decay=weight_decay)
    optimizers = [adamw, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def orthogonalize(g, steps=5):
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (U V^T of g's SVD), as Muon uses it.

    The quintic's coefficients trade exactness for speed: singular values land in roughly [0.7, 1.2], which is
    what Muon needs. bf16 on GPUs; fp32 elsewhere (CPU bf16 matmuls are slow).
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Momentum, then an orthogonalized update: every direction of a weight matrix moves at the same rate.

    Gradients are already averaged across ranks (DDP), so each rank computes the same update.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.0, ns_steps=5):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalize(p.grad.lerp(buf, group["momentum"]), group["ns_steps"])  # Nesterov
                aspect = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"] * aspect)
