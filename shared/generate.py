"""Generation: greedy decoding, temperature, top-k, top-p, end-of-text handling and a KV cache.

Works with any model that maps token ids (batch, seq) to logits (batch, seq, vocab), has a
``context_length`` and can make a cache with ``new_cache()`` (``GPTModel`` and ``LlamaModel``).
"""

from contextlib import nullcontext
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from shared.attention import KVCache
from shared.runtime import eval_mode

__all__ = [
    "CausalLM",
    "generate",
    "generate_text",
    "sample_next",
    "set_decode_layout",
    "top_k_filter",
    "top_p_filter",
    "trim_at_eos",
]


@runtime_checkable
class CausalLM(Protocol):
    """What generate needs from a model."""

    context_length: int

    def __call__(self, idx: Tensor, cache: KVCache | None = None) -> Tensor: ...

    def new_cache(self) -> KVCache: ...


def top_k_filter(logits: Float[Tensor, "batch vocab"], k: int) -> Float[Tensor, "batch vocab"]:
    """Keep the ``k`` largest logits of each row (and any tied with the k-th); the rest become -inf."""
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Float[Tensor, "batch vocab"], p: float) -> Float[Tensor, "batch vocab"]:
    """Nucleus filter: keep the most likely tokens until their probabilities add up to ``p``.

    A token is dropped when the tokens ranked above it already cover at least ``p``, so the most
    likely token always survives.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), got {top_p}")


def sample_next(
    logits: Float[Tensor, "batch vocab"],
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """Pick one token per row: the argmax if ``temperature == 0``, else a sample from
    softmax(logits / temperature) restricted by top-k and then top-p."""
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: CausalLM,
    idx: Int[Tensor, "batch seq"],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "batch total"]:
    """Append up to ``max_new_tokens`` tokens to each prompt row of ``idx``; returns prompt + new tokens.

    - ``temperature=0`` is greedy decoding; otherwise sample, optionally restricted by ``top_k``
      and ``top_p``, drawing from ``generator`` (seed it for repeatable samples).
    - With ``eos_id``, a row that produces it is finished: it stops growing, and its remaining
      positions are filled with ``eos_id`` so the batch stays one tensor (``trim_at_eos`` cuts
      them off). Generation ends early when every row has finished.
    - Inputs longer than the model's context are cropped to the last ``context_length`` tokens.
    - ``use_cache=True`` keeps each layer's keys and values so every step processes only the new
      token. It gives the same tokens as ``use_cache=False``. Once the sequence is longer than the
      context, every step re-encodes the last ``context_length`` tokens (absolute positions shift,
      so cached keys cannot be reused), with or without the cache.
    The model is put in eval mode for the call and restored afterwards.
    """
    _check_sampling(temperature, top_k, top_p)
    if idx.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. an end-of-text id to start fresh)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    context = model.context_length
    with eval_mode(model) if isinstance(model, nn.Module) else nullcontext():
        out = idx
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            if use_cache and out.shape[1] <= context:
                if cache is None:  # first step: encode the whole prompt, filling the cache
                    cache = model.new_cache()
                    logits = model(out, cache)[:, -1]
                else:  # later steps: only the newest token
                    logits = model(out[:, -1:], cache)[:, -1]
            else:
                logits = model(out[:, -context:])[:, -1]
            next_id = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
                finished |= next_id == eos_id
            out = torch.cat([out, next_id[:, None]], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        return out


def trim_at_eos(ids: Int[Tensor, "batch seq"], eos_id: int, start: int = 0) -> list[list[int]]:
    """Each row as a list, cut after its first ``eos_id`` at or after position ``start``."""
    rows = []
    for row in ids.tolist():
        tail = row[start:]
        rows.append(row[: start + tail.index(eos_id) + 1] if eos_id in tail else row)
    return rows


def generate_text(model: CausalLM, tokenizer, prompt: str, max_new_tokens: int, device=None, **kwargs) -> str:
    """Encode ``prompt``, :func:`generate`, decode: a string in, the prompt plus its continuation out.

    ``tokenizer`` needs ``encode(str) -> list[int]`` and ``decode(list[int]) -> str`` (our
    ``BPETokenizer`` or a tiktoken ``Encoding``); ``kwargs`` go to :func:`generate`.
    """
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    out = generate(model, ids, max_new_tokens, **kwargs)
    eos_id = kwargs.get("eos_id")
    tokens = trim_at_eos(out, eos_id, start=ids.shape[1])[0] if eos_id is not None else out[0].tolist()
    return tokenizer.decode(tokens)


def set_decode_layout(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Store every ``nn.Linear`` weight of ``model`` column-major (``enabled``) or row-major again.

    Values, shapes, parameters and tied weights stay as they are; only the memory order changes.
    A ``Linear`` computes ``x @ weight.T``. Decoding one token makes ``x`` a single row, so each
    product is a matrix-vector product that reads the whole weight from memory; MKL's kernel for
    it on a CPU is faster when ``weight.T`` is the contiguous one (the (in, out) layout of
    Hugging Face GPT-2's ``Conv1D``). ``bench/generate_speed.py`` measures the gain on a
    124M-shaped GPT-2. Use it for generation on a CPU, where it was measured (small models whose
    weights fit in the processor's cache gain nothing). ``safetensors`` refuses to save
    non-contiguous tensors, so switch it off before saving that way (``torch.save`` and
    ``load_state_dict`` keep working either way).
    """
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear) or id(module.weight) in seen:
                continue
            seen.add(id(module.weight))  # a tied weight (head = token embedding) is moved once
            weight = module.weight
            if enabled and not weight.t().is_contiguous():
                weight.data = weight.data.t().contiguous().t()
            elif not enabled and not weight.is_contiguous():
                weight.data = weight.data.contiguous()
    return model
