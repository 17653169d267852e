"""The command-line trainer's options: a bad number is refused by name, and only an absent option takes
the setting's value (``--batch-size 0`` once trained with the default batch of 64 and exited 0)."""

import dataclasses
from pathlib import Path

import pytest
import torch

from shared.cli.pretrain import build_parser, parse_args, plan_run
from shared.settings import pick_setting

# Every option that takes a number, with a value it must refuse and a good value.
REFUSED = {
    "--vocab": ["0", "-5", "1.5", "many"],
    "--context": ["0", "-1"],
    "--emb": ["0", "-64"],
    "--heads": ["0", "-2"],
    "--layers": ["0", "-3"],
    "--kv-heads": ["0", "-1"],
    "--dropout": ["-0.1", "1", "1.5", "nan"],
    "--steps": ["0", "-10"],
    "--batch-size": ["0", "-64"],
    "--micro-batch-size": ["0", "-8"],
    "--lr": ["0", "-0.001", "inf", "nan"],
    "--min-lr": ["-0.0001", "nan"],
    "--warmup": ["-1"],
    "--weight-decay": ["-0.1", "nan"],
    "--eval-every": ["0", "-50"],
    "--eval-batches": ["0", "-1"],
    "--seed": ["-1"],
    "--stop-at-step": ["0", "-4"],
}
ACCEPTED = {
    "--vocab": ("vocab", "512", 512),
    "--context": ("context", "32", 32),
    "--emb": ("emb", "96", 96),
    "--heads": ("heads", "3", 3),
    "--layers": ("layers", "2", 2),
    "--kv-heads": ("kv_heads", "1", 1),
    "--dropout": ("dropout", "0", 0.0),
    "--steps": ("steps", "1", 1),
    "--batch-size": ("batch_size", "1", 1),
    "--micro-batch-size": ("micro_batch_size", "1", 1),
    "--lr": ("lr", "0.002", 0.002),
    "--min-lr": ("min_lr", "0", 0.0),
    "--warmup": ("warmup", "0", 0),
    "--weight-decay": ("weight_decay", "0", 0.0),
    "--eval-every": ("eval_every", "1", 1),
    "--eval-batches": ("eval_batches", "1", 1),
    "--seed": ("seed", "0", 0),
    "--stop-at-step": ("stop_at_step", "1", 1),
}


def test_every_numeric_option_is_covered():
    numeric = {a.option_strings[-1] for a in build_parser()._actions if a.type not in (None, str, Path)}
    assert numeric == set(REFUSED) == set(ACCEPTED)


@pytest.mark.parametrize(("option", "value"), [(o, v) for o, values in REFUSED.items() for v in values])
def test_a_bad_number_is_refused_naming_the_option(option, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args([option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected " in err and value in err, err


@pytest.mark.parametrize("option", list(ACCEPTED))
def test_a_good_number_is_read(option):
    dest, text, value = ACCEPTED[option]
    assert getattr(parse_args([option, text]), dest) == value


def test_absent_options_take_the_settings_values_and_given_ones_replace_them():
    setting = pick_setting(torch.device("cpu"), "cpu")
    gpt, batch_size, config = plan_run(parse_args([]), setting, vocab_size=300)
    assert gpt == dataclasses.replace(setting.gpt, vocab_size=300)
    assert batch_size == setting.batch_size
    assert (config.max_steps, config.lr, config.warmup_steps, config.seed) == (
        setting.run.max_steps, setting.run.lr, setting.run.warmup_steps, setting.run.seed)

    given = parse_args(["--batch-size", "1", "--seed", "0", "--warmup", "0", "--dropout", "0", "--layers", "1",
                        "--steps", "5", "--lr", "0.002", "--weight-decay", "0"])
    gpt, batch_size, config = plan_run(given, setting, vocab_size=300)
    assert batch_size == 1 != setting.batch_size
    assert (gpt.n_layers, gpt.drop_rate) == (1, 0.0)
    assert (config.seed, config.warmup_steps, config.max_steps, config.lr, config.weight_decay) == (0, 0, 5, 0.002,
                                                                                                     0.0)
    assert setting.run.seed != 0 and setting.run.weight_decay != 0  # so that 0 was really given, not kept
