"""The chat format: new special tokens keep every old id, a grown model keeps its old rows and logits,
the template masks the prompt, held-out conversations stay unseen, and chat() stops at end-of-turn."""

import dataclasses

import pytest
import torch

from shared.chat import (
    END_OF_TURN,
    TURN,
    Reply,
    Turn,
    add_special_tokens,
    chat,
    chat_token_ids,
    encode_chats,
    fixed_length_prompt,
    generate_replies,
    grow_vocabulary,
    render_chat,
    with_chat_tokens,
)
from shared.conversations import play_conversations
from shared.corpus import shakespeare_bpe, tiny_shakespeare
from shared.datasets import train_val_split
from shared.files import gpt2_bpe_files
from shared.generate import generate
from shared.llama import LlamaConfig, LlamaModel
from shared.lora import apply_lora
from shared.model import GPTConfig, GPTModel
from shared.sft import collate_instructions, next_token_pairs
from shared.tokenizer import ENDOFTEXT, BPETokenizer

SAMPLE = "GREMIO:\nGood morrow, neighbour Baptista.\n\nBAPTISTA:\nGood morrow, neighbour Gremio.\n"


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return shakespeare_bpe()


@pytest.fixture(scope="module")
def chat_bpe(bpe) -> BPETokenizer:
    return with_chat_tokens(bpe)


@pytest.fixture(scope="module")
def split():
    return play_conversations()


# -- tokens ------------------------------------------------------------------------------------


def test_chat_tokens_come_after_every_old_id_and_leave_ordinary_text_alone(bpe, chat_bpe):
    assert chat_bpe.vocab_size == bpe.vocab_size + 2
    assert chat_token_ids(chat_bpe) == (bpe.vocab_size, bpe.vocab_size + 1)
    assert chat_bpe.special_tokens[ENDOFTEXT] == bpe.special_tokens[ENDOFTEXT]
    text = tiny_shakespeare()[-20_000:] + ENDOFTEXT + SAMPLE
    assert chat_bpe.encode(text) == bpe.encode(text)
    for token in (TURN, END_OF_TURN):
        (token_id,) = chat_bpe.encode(token)  # one new id each
        assert token_id >= bpe.vocab_size and chat_bpe.decode([token_id]) == token
    ids = chat_bpe.encode(f"{TURN}GREMIO:\nGood morrow.{END_OF_TURN}")
    assert ids[0] == chat_bpe.special_tokens[TURN] and ids[-1] == chat_bpe.special_tokens[END_OF_TURN]
    assert chat_bpe.decode(ids) == f"{TURN}GREMIO:\nGood morrow.{END_OF_TURN}"
    assert bpe.encode(TURN) != chat_bpe.encode(TURN)  # the old tokenizer is untouched: plain text there
    assert len(bpe.special_tokens) == 1


def test_special_tokens_are_refused_twice_and_needed_for_chat(bpe, chat_bpe):
    with pytest.raises(ValueError, match="already has"):
        with_chat_tokens(chat_bpe)
    with pytest.raises(ValueError, match="already has"):
        add_special_tokens(bpe, ["<|a|>", "<|a|>"])
    with pytest.raises(ValueError, match="with_chat_tokens"):
        chat_token_ids(bpe)


def test_chat_tokens_follow_gpt2s_last_id():
    # GPT-2's ids are not in byte order and <|endoftext|> is its last id (50256): the new ones come after.
    gpt2 = BPETokenizer.from_gpt2(*gpt2_bpe_files())
    chat_gpt2 = with_chat_tokens(gpt2)
    assert chat_token_ids(chat_gpt2) == (50257, 50258) and chat_gpt2.vocab_size == 50259
    text = SAMPLE + ENDOFTEXT + " Good morrow."
    assert chat_gpt2.encode(text) == gpt2.encode(text)
    assert chat_gpt2.encode(f"{TURN}{SAMPLE}{END_OF_TURN}") == [50257, *gpt2.encode(SAMPLE), 50258]


# -- a bigger vocabulary -----------------------------------------------------------------------

GPT_TINY = GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2, n_layers=2)
LLAMA_TINY = LlamaConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2, n_layers=2, hidden_dim=32)


def _rows(model):
    embedding = model.embed.tok if isinstance(model, GPTModel) else model.tok_emb
    return embedding.weight, model.out_head.weight


@pytest.mark.parametrize("kind", ["gpt", "llama"])
@pytest.mark.parametrize("tied", [False, True])
def test_grow_vocabulary_keeps_old_rows_and_logits_exactly(kind, tied):
    torch.manual_seed(0)
    model_class, config = (GPTModel, GPT_TINY) if kind == "gpt" else (LlamaModel, LLAMA_TINY)
    model = model_class(dataclasses.replace(config, tie_weights=tied)).eval()
    before = [w.detach().clone() for w in _rows(model)]
    grown = grow_vocabulary(model, 53)

    assert grown.config.vocab_size == 53 and grown.config == dataclasses.replace(model.config, vocab_size=53)
    embedding, head = _rows(grown)
    assert embedding.shape == head.shape == (53, 16)
    assert (embedding is head) == tied  # a tied head stays one matrix
    for old, new in zip(before, (embedding, head), strict=True):
        assert torch.equal(new[:50], old)
        assert torch.equal(new[50:], old.mean(dim=0).expand(3, -1))
    for old, now in zip(before, _rows(model), strict=True):
        assert torch.equal(old, now) and now.shape[0] == 50  # the original model is left as it is

    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        old_logits, new_logits = model(idx), grown.eval()(idx)
    torch.testing.assert_close(new_logits[..., :50], old_logits, rtol=0, atol=1e-6)
    # Mean rows: each new token's logit is the mean of the old logits, so (Jensen: exp(mean) <= mean(exp))
    # each new token starts with a probability of at most 1 / (new vocab size).
    torch.testing.assert_close(new_logits[..., 50:], old_logits.mean(-1, keepdim=True).expand(2, 12, 3))
    assert new_logits.softmax(-1)[..., 50:].max().item() <= 1 / 53 + 1e-6
    grown(torch.tensor([[50, 51, 52]]))  # the new ids are usable


def test_grow_vocabulary_trains_the_new_rows_and_refuses_what_it_cannot_do():
    model = GPTModel(GPT_TINY)
    grown = grow_vocabulary(model, 52)
    assert all(p.requires_grad for p in _rows(grown))
    assert grow_vocabulary(model, 50).config == model.config
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_vocabulary(model, 49)
    with pytest.raises(TypeError, match="before wrapping"):
        grow_vocabulary(apply_lora(GPTModel(GPT_TINY), ["out_head"], rank=2, alpha=4), 52)


# -- the template ------------------------------------------------------------------------------


def test_template_renders_turns_and_marks_only_the_response(chat_bpe):
    turn_id, end_id = chat_token_ids(chat_bpe)
    turns = [Turn("GREMIO", "Good morrow, neighbour Baptista."), Turn("BAPTISTA", "Good morrow, neighbour Gremio.")]
    prompt, response = render_chat(turns, chat_bpe)
    assert chat_bpe.decode(prompt) == f"{TURN}GREMIO:\nGood morrow, neighbour Baptista.{END_OF_TURN}{TURN}BAPTISTA:\n"
    assert chat_bpe.decode(response) == f"Good morrow, neighbour Gremio.{END_OF_TURN}"
    assert prompt[0] == turn_id and response[-1] == end_id and prompt.count(end_id) == 1
    assert chat_bpe.encode(chat_bpe.decode(prompt + response)) == prompt + response  # the same ids as the whole text

    # What collate_instructions makes of it: the response's tokens, end-of-turn included, are the
    # targets that count, each once; the prompt (whoever speaks in it) and the padding are not.
    other = render_chat([Turn("GRUMIO", "Good morrow."), turns[1]], chat_bpe)
    token_ids, response_mask = collate_instructions([(prompt, response), other], pad_id=end_id)
    _, targets, loss_mask = next_token_pairs(token_ids, response_mask)
    for row, (p, r) in enumerate([(prompt, response), other]):
        assert targets[row, loss_mask[row]].tolist() == r == response
        assert token_ids[row, : len(p)].tolist() == p and not response_mask[row, : len(p)].any()
    assert loss_mask.sum().item() == 2 * len(response)


def test_template_refuses_what_it_cannot_render(chat_bpe):
    with pytest.raises(ValueError, match="no turns"):
        render_chat([], chat_bpe)
    with pytest.raises(ValueError, match="contains"):
        render_chat([Turn("A", f"hi{END_OF_TURN}"), Turn("B", "ho")], chat_bpe)
    assert encode_chats([[Turn("A", "a b c d e f"), Turn("B", "g")]], chat_bpe, max_tokens=8) == []


# -- conversations from the plays --------------------------------------------------------------


def test_heldout_conversations_are_never_seen_in_pretraining_or_tuning(split):
    corpus = tiny_shakespeare()
    train_text, _ = train_val_split(corpus)
    assert len(split.sft) > 400 and len(split.heldout) > 100 and len(split.judge) > 100
    both = split.sft + split.heldout
    assert all(corpus.startswith(c.source_text, c.prompt.start) for c in both)  # the reply follows the speech
    assert all(c.prompt.start >= len(train_text) for c in both)  # from the last 10% only, whole speeches
    assert all(c.prompt.speaker != c.reply.speaker for c in both)
    heldout_speeches = {s.start for c in split.heldout for s in c}
    assert heldout_speeches.isdisjoint({s.start for c in split.sft for s in c})  # split by speech
    sft_texts = [c.source_text for c in split.sft]
    for c in split.heldout:
        assert c.source_text not in train_text
        assert not any(c.source_text in t for t in sft_texts)
    for speakers in ({c.reply.speaker for c in split.sft}, {c.reply.speaker for c in split.heldout}):
        assert {"PETRUCHIO", "PROSPERO"} <= speakers  # both plays of the last 10% in both sets
    judge = {s.start for s in split.judge}
    assert judge.isdisjoint(heldout_speeches | {s.start for c in split.sft for s in c})  # the judge's own speeches
    assert all(s.start >= len(train_text) for s in split.judge)
    assert {"PETRUCHIO", "PROSPERO"} <= {s.speaker for s in split.judge}


def test_the_judge_share_leaves_the_heldout_blocks_alone_and_is_checked():
    with_judge, without = play_conversations(), play_conversations(judge_fraction=0.0)
    assert without.judge == [] and len(without.sft) > len(with_judge.sft)
    # the same held-out blocks; with less tuning text, its word-for-word filter drops no more of them
    assert set(without.heldout) <= set(with_judge.heldout)
    with pytest.raises(ValueError, match="judge_fraction"):
        play_conversations(heldout_fraction=0.5, judge_fraction=0.5)


def test_an_exchange_repeated_in_pretraining_or_tuning_text_is_never_held_out():
    # A made-up play: the exchange "Ay." / "No." is in the pretraining half and twice in the other half.
    repeated = "KATE:\nAy.\n\nPETRUCHIO:\nNo."
    first = [f"{'AB'[i % 2]}:\nThe first half, line {i}." for i in range(40)]
    second = [f"{'CD'[i % 2]}:\nThe second half, line {i}." for i in range(40)]
    second[10:10] = [repeated]
    second[30:30] = [repeated]
    text = "\n\n".join([*first[:20], repeated, *first[20:], *second]) + "\n"
    kate = [i for i in range(len(text)) if text.startswith(repeated, i)][1:]  # the two in the second half
    assert text.index(repeated) < len(text) // 2 < kate[0]  # the pretraining half has one
    petruchio = [i + len("KATE:\nAy.\n\n") for i in kate]
    filtered = 0
    for seed in range(10):
        split = play_conversations(text, val_fraction=0.5, block_size=4, seed=seed)
        assert split.heldout and split.sft
        assert repeated not in {c.source_text for c in split.heldout}
        replies, prompts = {c.reply.start for c in split.heldout}, {c.prompt.start for c in split.heldout}
        # Both speeches held out (KATE's as a reply, PETRUCHIO's as a prompt), yet not their exchange:
        filtered += sum(k in replies and p in prompts for k, p in zip(kate, petruchio, strict=True))
    assert filtered > 0  # the filter, not luck, kept it out
    assert play_conversations(text, val_fraction=0.5, block_size=4, seed=9) == split  # deterministic
    assert play_conversations(text, val_fraction=0.5, block_size=4, seed=8) != split


def test_play_conversations_render_to_the_same_ids_as_their_text(split, chat_bpe):
    examples = encode_chats([c.turns for c in split.heldout[:40]], chat_bpe, max_tokens=10_000)
    for c, (prompt, response) in zip(split.heldout, examples, strict=False):
        text = chat_bpe.decode(prompt + response)
        (a, b) = c.turns
        assert text == f"{TURN}{a.speaker}:\n{a.text}{END_OF_TURN}{TURN}{b.speaker}:\n{b.text}{END_OF_TURN}"
        assert chat_bpe.encode(text) == prompt + response
    fits = encode_chats([c.turns for c in split.sft], chat_bpe, max_tokens=64)
    assert 0 < len(fits) < len(split.sft) and all(len(p) + len(r) <= 64 for p, r in fits)
    trimmed = encode_chats([c.turns for c in split.sft], chat_bpe, max_tokens=64, trim_prompt=True)
    assert len(fits) < len(trimmed) < len(split.sft) and all(len(p) + len(r) <= 64 for p, r in trimmed)
    assert set(map(str, fits)) <= set(map(str, trimmed))  # what fitted is kept as it was


def test_trimming_drops_the_oldest_turns_then_the_first_lines_never_the_response(chat_bpe):
    turns = [Turn("A", "one two three"), Turn("B", "four five\nsix seven\neight"), Turn("C", "nine ten")]
    full = render_chat(turns, chat_bpe)
    assert encode_chats([turns], chat_bpe, len(full[0]) + len(full[1])) == [full]
    without_a = render_chat(turns[1:], chat_bpe)
    last_line = render_chat([Turn("B", "eight"), turns[2]], chat_bpe)
    for examples, max_tokens in [
        ([without_a], len(without_a[0]) + len(without_a[1])),
        ([last_line], len(last_line[0]) + len(last_line[1])),
    ]:
        assert encode_chats([turns], chat_bpe, max_tokens, trim_prompt=True) == examples
        assert encode_chats([turns], chat_bpe, max_tokens) == []
    assert encode_chats([turns], chat_bpe, len(last_line[0]) + len(last_line[1]) - 1, trim_prompt=True) == []


# -- chat() ------------------------------------------------------------------------------------


def _forced_model(vocab_size: int, script: list[int]) -> GPTModel:
    """A GPT whose greedy next token after n tokens is ``script[n - 1]``, whatever the tokens are.

    Every block is zeroed (its residual branch adds nothing), the token embedding too; position p's
    embedding is a one-hot on a slot, and the head maps each slot to one token id."""
    slots = sorted(set(script))
    config = GPTConfig(
        vocab_size=vocab_size, context_length=48, emb_dim=len(slots) + len(slots) % 2, n_heads=1, n_layers=1
    )
    model = GPTModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.final_norm.weight.fill_(1.0)
        for position, token in enumerate(script):
            model.embed.pos.weight[position, slots.index(token)] = 10.0
        for slot, token in enumerate(slots):
            model.out_head.weight[token, slot] = 1.0
    return model


def test_chat_stops_at_end_of_turn_and_decodes_the_reply(chat_bpe):
    _, end_id = chat_token_ids(chat_bpe)
    prompt, _ = render_chat([Turn("Stranger", "Good morrow."), Turn("BAPTISTA", "")], chat_bpe)
    words = chat_bpe.encode_ordinary("Good morrow, sir.")
    script = [0] * (len(prompt) - 1) + words + [end_id] + [5] * 10
    model = _forced_model(chat_bpe.vocab_size, script)
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    assert chat(model, chat_bpe, "Good morrow.", "BAPTISTA", 20) == Reply("Good morrow, sir.", True)
    hook.remove()
    assert len(calls) == len(words) + 1  # one step per token: it stopped at end-of-turn, not after 20
    assert chat(model, chat_bpe, "Good morrow.", "BAPTISTA", 2) == Reply(chat_bpe.decode(words[:2]), False)
    # Without the stop, generate would go on past end-of-turn:
    out = generate(model, torch.tensor([prompt]), len(words) + 3)
    assert out[0, len(prompt) + len(words)].item() == end_id and out.shape[1] == len(prompt) + len(words) + 3
    with pytest.raises(ValueError, match="grow_vocabulary"):
        chat(GPTModel(dataclasses.replace(GPT_TINY, vocab_size=chat_bpe.vocab_size - 2)), chat_bpe, "Hi.", "A", 3)
    with pytest.raises(ValueError, match="context"):
        chat(model, chat_bpe, "Good morrow. " * 40, "BAPTISTA", 3)


def test_chat_samples_reproducibly_with_a_seeded_generator(chat_bpe):
    torch.manual_seed(0)
    model = grow_vocabulary(
        GPTModel(dataclasses.replace(GPT_TINY, vocab_size=chat_bpe.vocab_size - 2, context_length=48)),
        chat_bpe.vocab_size,
    )
    replies = [
        chat(model, chat_bpe, "Hail.", "KATHARINA", 8, temperature=1.0, generator=torch.Generator().manual_seed(seed))
        for seed in (3, 3, 4)
    ]
    assert replies[0] == replies[1] != replies[2]


# -- prompts of one length, generated together -------------------------------------------------


def test_fixed_length_prompts_cut_only_the_first_speech_and_generate_as_one_at_a_time(chat_bpe, split):
    turn_id, end_id = chat_token_ids(chat_bpe)
    conversations = split.heldout[:30]
    prompts = [p for c in conversations if (p := fixed_length_prompt(c.turns, chat_bpe, 24)) is not None]
    assert len(prompts) > 20 and {len(p) for p in prompts} == {24}
    for c in conversations:
        cut = fixed_length_prompt(c.turns, chat_bpe, 24)
        full, _ = render_chat(c.turns, chat_bpe)
        if cut is None:
            continue
        header = [turn_id, *chat_bpe.encode_ordinary(f"{c.prompt.speaker}:\n")]
        assert cut[: len(header)] == header and full[-(24 - len(header)):] == cut[len(header):]  # the speech's end
        assert cut[-1 - len(chat_bpe.encode_ordinary(f"{c.reply.speaker}:\n")) :][0] == turn_id
    assert fixed_length_prompt(conversations[0].turns, chat_bpe, 10_000) is None
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=chat_bpe.vocab_size, context_length=36, emb_dim=16, n_heads=2,
                               n_layers=1)).eval()
    mixed = [*prompts[:4], prompts[4][3:]]  # two lengths: two batches
    replies = generate_replies(model, chat_bpe, mixed, 8)
    for prompt, reply in zip(mixed, replies, strict=True):
        out = generate(model, torch.tensor([prompt]), 8, eos_id=end_id)[0, len(prompt):].tolist()
        ended = end_id in out
        assert reply == Reply(chat_bpe.decode(out[: out.index(end_id)] if ended else out), ended)
    with pytest.raises(ValueError, match="longer than the model's context of 36"):
        generate_replies(model, chat_bpe, prompts[:1], 20)
