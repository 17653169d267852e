"""Benchmark: forward + backward throughput of our GPTModel against Hugging Face's GPT2LMHeadModel.

    python bench/gpt_vs_hf.py [--rounds 15]

Same config and the same weights (ours are loaded from the HF model), CPU, one process. The two
models take turns (interleaved rounds), so background noise hits both alike; each round times a
few training steps (forward, loss, backward). Prints tokens/s for each and the median ratio
ours / HF. Shape checks are off for the measurement (they cost tens of microseconds per call).
"""

import argparse
import platform
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from shared.model import GPTConfig, GPTModel
from shared.shapes import set_shape_checks
from shared.train import cross_entropy
from shared.weights import load_gpt2_from_hf

CONFIG = GPTConfig(
    vocab_size=1024,
    context_length=256,
    emb_dim=256,
    n_heads=8,
    n_layers=6,
    drop_rate=0.0,
    qkv_bias=True,
    tie_weights=True,
)
BATCH, SEQ, STEPS_PER_ROUND = 8, 256, 3


def step_time(model, idx, targets, hf: bool) -> float:
    start = time.perf_counter()
    for _ in range(STEPS_PER_ROUND):
        logits = model(idx).logits if hf else model(idx)
        loss = cross_entropy(logits, targets)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / STEPS_PER_ROUND


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    set_shape_checks(False)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=CONFIG.vocab_size,
            n_positions=CONFIG.context_length,
            n_embd=CONFIG.emb_dim,
            n_layer=CONFIG.n_layers,
            n_head=CONFIG.n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=None,
            eos_token_id=None,
        )
    ).train()
    ours = load_gpt2_from_hf(GPTModel(CONFIG, use_sdpa=True), hf.state_dict()).train()
    explicit = load_gpt2_from_hf(GPTModel(CONFIG, use_sdpa=False), hf.state_dict()).train()
    idx = torch.randint(0, CONFIG.vocab_size, (BATCH, SEQ))
    targets = torch.randint(0, CONFIG.vocab_size, (BATCH, SEQ))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max() < 1e-4, "the models differ"

    for _ in range(2):  # warm up all three
        (
            step_time(hf, idx, targets, True),
            step_time(ours, idx, targets, False),
            step_time(explicit, idx, targets, False),
        )
    times = {"hf": [], "ours": [], "explicit": []}
    for _ in range(args.rounds):
        times["hf"].append(step_time(hf, idx, targets, True))
        times["ours"].append(step_time(ours, idx, targets, False))
        times["explicit"].append(step_time(explicit, idx, targets, False))
    tokens = BATCH * SEQ
    ratios = [h / o for h, o in zip(times["hf"], times["ours"], strict=True)]
    ratios_explicit = [h / o for h, o in zip(times["hf"], times["explicit"], strict=True)]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"config: {CONFIG}; batch {BATCH} x {SEQ} tokens; forward + backward")
    for name, label in [
        ("hf", "HF GPT2LMHeadModel (sdpa)"),
        ("ours", "ours, use_sdpa=True"),
        ("explicit", "ours, explicit attention"),
    ]:
        print(f"{label:28} {tokens / statistics.median(times[name]):8.0f} tokens/s")
    print(f"median ratio ours (sdpa) / HF:     {statistics.median(ratios):.2f}  (target >= 1.0, aim 1.3)")
    print(f"median ratio ours (explicit) / HF: {statistics.median(ratios_explicit):.2f}")


if __name__ == "__main__":
    main()
