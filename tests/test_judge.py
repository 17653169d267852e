"""The judge: trained only on speeches no tuning or evaluation uses, deterministic, scoring as its classifier says."""

from collections import Counter

import pytest
import torch

from shared.conversations import Conversation, play_conversations
from shared.corpus import shakespeare_bpe, tiny_shakespeare
from shared.judge import PLAYS, judge_speeches, mismatched_replies, play_of, train_judge
from shared.model import GPTConfig, GPTModel
from shared.tasks import Speech, held_out_speeches


@pytest.fixture(scope="module")
def split():
    return play_conversations()


@pytest.fixture(scope="module")
def tokenizer():
    return shakespeare_bpe()


def small_base(tokenizer) -> GPTModel:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, emb_dim=16, n_heads=2, n_layers=1)
    return GPTModel(config).eval()


def test_no_judge_training_speech_is_a_speech_of_an_sft_or_heldout_conversation(split):
    speeches = judge_speeches(split)
    tuned_or_scored = {s.start for c in split.sft + split.heldout for s in (c.prompt, c.reply)}
    held_out = {s.start for s in held_out_speeches()}
    assert len(speeches) > 100 and not {s.start for s in speeches} & tuned_or_scored
    assert {s.start for s in speeches} <= held_out  # and none was pretrained on
    # the four characters with the most judge speeches each have a few dozen of them, in both plays
    counts = Counter(s.speaker for s in speeches).most_common(4)
    assert all(n >= 15 for _, n in counts) and {"PETRUCHIO", "PROSPERO"} <= {name for name, _ in counts}
    leaky = split._replace(judge=[*split.judge, split.sft[0].reply])
    with pytest.raises(ValueError, match="memorised"):
        judge_speeches(leaky)
    with pytest.raises(TypeError, match="ConversationSplit"):
        judge_speeches(split.heldout)


def test_a_mismatched_reply_is_the_next_one_by_another_character():
    def conv(speaker: str, text: str, start: int) -> Conversation:
        return Conversation(Speech("ASKER", "Well?", start), Speech(speaker, text, start + 10))

    conversations = [conv("A", "a1", 0), conv("A", "a2", 100), conv("B", "b1", 200), conv("C", "c1", 300)]
    assert mismatched_replies(conversations) == ["b1", "b1", "c1", "a1"]
    with pytest.raises(ValueError, match="another character"):
        mismatched_replies(conversations[:2])


def test_the_judges_mismatched_rate_never_gives_a_character_its_own_reply(split):
    known = [c for c in split.heldout if c.reply.speaker in {"PETRUCHIO", "KATHARINA", "TRANIO", "PROSPERO"}]
    by_text = {c.reply.text: c.reply.speaker for c in known}
    replies = mismatched_replies(known)
    assert len(replies) == len(known)
    assert all(by_text[r] != c.reply.speaker for r, c in zip(replies, known, strict=True))


def test_play_of_splits_the_held_out_part_at_the_tempests_first_line(split):
    speeches = held_out_speeches()
    plays = [play_of(s) for s in speeches]
    assert plays[0] == PLAYS[0] and plays[-1] == PLAYS[1]
    first = plays.index(PLAYS[1])
    assert plays == [PLAYS[0]] * first + [PLAYS[1]] * (len(plays) - first)  # one border
    assert tiny_shakespeare()[speeches[first].start :].startswith("Master:\nBoatswain!")
    by_character = {}
    for s, play in zip(speeches, plays, strict=True):
        by_character.setdefault(s.speaker, set()).add(play)
    assert all(len(p) == 1 for p in by_character.values())  # the two casts do not overlap
    with pytest.raises(ValueError, match="Tempest's opening"):
        play_of(speeches[0], corpus="A:\nb\n")


@pytest.mark.parametrize("kind", ["who_speaks", "which_play"])
def test_a_judge_is_deterministic_and_scores_by_its_top_class(split, tokenizer, kind):
    base = small_base(tokenizer)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    judge = train_judge(base, tokenizer, split, kind=kind, n_characters=3, steps=2, batch_size=8, seed=1)
    again = train_judge(base, tokenizer, split, kind=kind, n_characters=3, steps=2, batch_size=8, seed=1)
    known = [c for c in split.heldout if judge.knows(c.reply.speaker)][:12]
    replies, characters = [c.reply.text for c in known], [c.reply.speaker for c in known]
    probs = judge.probabilities(replies)
    assert probs.shape == (len(known), len(judge.class_names))
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(known)))
    torch.testing.assert_close(again.probabilities(replies), probs)
    targets = [judge.target[c] for c in characters]
    assert judge.in_character(replies, characters) == [int(probs[i].argmax()) == t for i, t in enumerate(targets)]
    assert judge.scores(replies, characters) == pytest.approx([probs[i, t].item() for i, t in enumerate(targets)])
    assert judge.accuracy(known) == pytest.approx(sum(judge.in_character(replies, characters)) / len(known))
    other = mismatched_replies(known)
    assert judge.mismatched(known) == pytest.approx(sum(judge.in_character(other, characters)) / len(known))
    assert len(judge.in_character(["", "a"], characters[:2])) == 2  # an empty reply is scored, not refused
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # the judge trained a copy
    if kind == "who_speaks":
        assert len(judge.class_names) == 3 and set(judge.target) == set(judge.class_names)
    else:
        assert judge.class_names == PLAYS and judge.target["PROSPERO"] == 1 and judge.target["PETRUCHIO"] == 0


def test_the_judge_names_what_it_cannot_score(split, tokenizer):
    judge = train_judge(small_base(tokenizer), tokenizer, split, n_characters=2, steps=1, batch_size=4)
    with pytest.raises(ValueError, match="cannot score replies asked of"):
        judge.in_character(["Ay, sir."], ["NOBODY"])
    with pytest.raises(ValueError, match="give one each"):
        judge.in_character(["Ay, sir.", "No."], [judge.class_names[0]])
    with pytest.raises(ValueError, match="unknown kind"):
        train_judge(small_base(tokenizer), tokenizer, split, kind="who_wrote")
