"""Sample job: continue each prompt with text from a checkpoint (`openseek-nanochat sample SPEC.json`).

Each prompt starts a new document (after the BOS token, as in training) and gets exactly `max_tokens` new tokens:
special tokens are never sampled, so no completion stops early. Sampling is nanochat's (temperature, then top-k) from
a generator seeded with the spec's seed for every prompt, so a prompt's text depends only on the checkpoint, the
prompt and the sampling settings. The whole window is recomputed for each token (the models keep no cache): with
max_tokens <= 1024 on small models that is seconds. Past the model's context, the window slides.
"""

import math
import time

import torch

from openseek_nanochat.probe import model as checkpoint_model
from openseek_nanochat.probe.spec import SampleSpec


def pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    if temperature == 0:
        return int(torch.argmax(logits))
    if top_k is not None and top_k < logits.numel():
        values, ids = torch.topk(logits, top_k)
        choice = torch.multinomial(torch.softmax(values / temperature, dim=-1), 1, generator=generator)
        return int(ids[choice])
    return int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator))


@torch.inference_mode()
def complete(model, tokenizer, prompt: str, spec: SampleSpec, context: int, device: torch.device) -> list[int]:
    """The `spec.max_tokens` token ids that follow `prompt`."""
    vocab = tokenizer.get_vocab_size()
    special = sorted(tokenizer.encode_special(name) for name in tokenizer.get_special_tokens())
    ids = [tokenizer.get_bos_token_id(), *tokenizer.encode(prompt)]
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    new: list[int] = []
    for _ in range(spec.max_tokens):
        window = torch.tensor([ids[-context:]], dtype=torch.long, device=device)
        logits = model(window)[0, -1, :vocab].float()
        logits[special] = -math.inf
        new.append(pick(logits, spec.temperature, spec.top_k, generator))
        ids.append(new[-1])
    return new


def run(spec: SampleSpec, emit) -> dict:
    checkpoint = spec.checkpoint
    device = checkpoint_model.pick_device(spec.device)
    model, tokenizer = checkpoint_model.load(checkpoint, device)
    print(f"loaded step {checkpoint.step} of {checkpoint.checkpoint_dir} on {device}", flush=True)
    completions = []
    started = time.monotonic()
    for i, prompt in enumerate(spec.prompts):
        emit("progress", fraction=i / len(spec.prompts), message=f"prompt {i + 1} of {len(spec.prompts)}")
        ids = complete(model, tokenizer, prompt, spec, checkpoint.sequence_len, device)
        completions.append({"prompt": prompt, "text": tokenizer.decode(ids), "tokens": len(ids)})
    seconds = time.monotonic() - started
    emit("progress", fraction=1.0, message=f"{len(completions)} completion(s) in {seconds:.1f} s")
    result = {
        "train_job": spec.train_job,
        "step": checkpoint.step,
        "completions": completions,
        "seed": spec.seed,
        "temperature": spec.temperature,
        "top_k": spec.top_k,
        "max_tokens": spec.max_tokens,
        "device": str(device),
        "seconds": round(seconds, 3),
    }
    emit("result", **result)
    return result
