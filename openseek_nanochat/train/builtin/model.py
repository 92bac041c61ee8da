"""The builtin GPT.

A small modern decoder, shaped like nanochat's: rotary position embeddings (no learned positions), RMSNorm without
parameters (after the embedding, before each sub-block and before the head), QK-norm, ReLU^2 MLP, no biases, untied
input and output embeddings, and tanh-capped logits. Its optimizers are optim.py's.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

LOGIT_SOFTCAP = 15.0
ROTARY_BASE = 100_000


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_embd: int = 768


def config_for_depth(depth: int, vocab_size: int, sequence_len: int, aspect_ratio: int = 64, head_dim: int = 128):
    """nanochat's sizing: width = depth * aspect_ratio, rounded up to whole heads of `head_dim`."""
    n_embd = math.ceil(depth * aspect_ratio / head_dim) * head_dim
    n_head = n_embd // head_dim
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head, n_embd=n_embd)


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):
    """Rotate the two halves of each head by position-dependent angles. x: (B, T, H, D)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        # separate q, k, v matrices: Muon orthogonalizes each on its own
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # under autocast q, k, v are bf16: keep attention in one dtype
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn = Attention(config)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, pad_vocab_to: int = 64):
        super().__init__()
        self.config = config
        # a padded vocabulary keeps the head's matmul on tensor-core-friendly shapes; logits are cropped back
        padded_vocab = math.ceil(config.vocab_size / pad_vocab_to) * pad_vocab_to
        self.wte = nn.Embedding(padded_vocab, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, padded_vocab, bias=False)
        cos, sin = self._rotary_tables(config.sequence_len, config.n_embd // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @staticmethod
    def _rotary_tables(seq_len, head_dim, device=None):
        inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
        return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, T, 1, D/2)

    @torch.no_grad()
    def init_weights(self):
        """Embedding ~ N(0, 1); head ~ N(0, 0.001) so the first logits are near uniform; matrices uniform with
        std 1/sqrt(width); the output projections of attention and MLP start at zero so each block starts as
        identity."""
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = math.sqrt(3) / math.sqrt(self.config.n_embd)
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        head_dim = self.config.n_embd // self.config.n_head
        cos, sin = self._rotary_tables(self.config.sequence_len, head_dim, self.cos.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def forward(self, idx, targets=None, loss_reduction="mean"):
        B, T = idx.shape
        x = norm(self.wte(idx))
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x))[..., : self.config.vocab_size].float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=loss_reduction
        )
        return loss if loss_reduction != "none" else loss.view(B, T)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self) -> int:
        """Training FLOPs per token: 6 per matmul weight (forward 2, backward 4) plus attention's q@k and p@v."""
        matmul_params = sum(p.numel() for p in self.blocks.parameters()) + self.lm_head.weight.numel()
        c = self.config
        return 6 * matmul_params + 12 * c.n_layer * c.n_embd * c.sequence_len
