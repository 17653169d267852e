"""The command-line program, ``python -m shared <stage>``: the stages are listed and an unknown one is a
clear error; every numeric option of every stage refuses a bad value by name (exit 2), and only an
absent option takes the default (``--batch-size 0`` once trained with the default batch of 64 and
exited 0); options that contradict each other are refused; the program sits above everything it
uses; and one tiny model goes through every stage as a learner would chain them."""

import ast
import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
import torch

from shared import cli
from shared.chat import CHAT_TOKENS
from shared.classify import SequenceClassifier, accuracy, encode_texts
from shared.cli import dpo, finetune, models, pretrain, sft
from shared.cli.pretrain import parse_args, plan_run
from shared.corpus import tiny_shakespeare
from shared.lora import LoRALinear, count_trainable
from shared.model import GPTConfig, GPTModel
from shared.settings import Setting, pick_setting
from shared.tokenizer import BPETokenizer
from shared.train import History, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"pretrain": pretrain, "finetune": finetune, "sft": sft, "dpo": dpo}
REQUIRED = {"dpo": ["--init", "sft.pt"]}  # what a stage cannot parse without
TINY = GPTConfig(vocab_size=40, context_length=16, emb_dim=16, n_heads=2, n_layers=2)

# Every option that takes a number, per stage, with values it must refuse ...
TRAINING_REFUSED = {
    "--steps": ["0", "-10"],
    "--batch-size": ["0", "-64"],
    "--lr": ["0", "-0.001", "inf", "nan"],
    "--seed": ["-1", "0.5"],
}
LORA_REFUSED = {"--lora-rank": ["0", "-4", "2.5"], "--lora-alpha": ["0", "-1", "nan"], "--lora-dropout": ["-0.1", "1"]}
REFUSED = {
    "pretrain": {
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
    },
    "finetune": {
        "--characters": ["0", "-2", "two"],
        "--labels": ["0", "-50"],
        "--weight-decay": ["-0.1", "nan"],
        **TRAINING_REFUSED,
        **LORA_REFUSED,
    },
    "sft": {"--conversations": ["0", "-1"], "--weight-decay": ["-0.1", "nan"], **TRAINING_REFUSED, **LORA_REFUSED},
    "dpo": {"--beta": ["0", "-0.1", "inf", "nan"], "--pairs": ["0", "-3"], **TRAINING_REFUSED, **LORA_REFUSED},
}
# ... and a good value: (attribute, text, value read).
TRAINING_ACCEPTED = {
    "--steps": ("steps", "1", 1),
    "--batch-size": ("batch_size", "1", 1),
    "--lr": ("lr", "0.002", 0.002),
    "--seed": ("seed", "0", 0),
}
LORA_ACCEPTED = {
    "--lora-rank": ("lora_rank", "1", 1),
    "--lora-alpha": ("lora_alpha", "0.5", 0.5),
    "--lora-dropout": ("lora_dropout", "0", 0.0),
}
ACCEPTED = {
    "pretrain": {
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
    },
    "finetune": {
        "--characters": ("characters", "2", 2),
        "--labels": ("labels", "1", 1),
        "--weight-decay": ("weight_decay", "0", 0.0),
        **TRAINING_ACCEPTED,
        **LORA_ACCEPTED,
    },
    "sft": {
        "--conversations": ("conversations", "1", 1),
        "--weight-decay": ("weight_decay", "0", 0.0),
        **TRAINING_ACCEPTED,
        **LORA_ACCEPTED,
    },
    "dpo": {"--beta": ("beta", "0.5", 0.5), "--pairs": ("pairs", "1", 1), **TRAINING_ACCEPTED, **LORA_ACCEPTED},
}


def run(stage: str, *argv: str) -> tuple[int, str, str]:
    """``python -m shared <stage> ...`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([stage, *argv])
        except SystemExit as e:  # argparse's --help and errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


# -- the stages ----------------------------------------------------------------------------------


def test_no_stage_or_help_lists_the_stages(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "error: name a stage" in err and all(f"  {stage} " in err for stage in STAGES)
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert set(STAGES) == set(cli.STAGES) and all(f"  {stage} " in out for stage in STAGES)


def test_an_unknown_stage_is_a_clear_error():
    code, _, err = run("train", "--steps", "3")
    assert code == 2 and "error: unknown stage 'train': choose one of pretrain, finetune, sft, dpo" in err


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_its_help(stage):
    code, out, _ = run(stage, "--help")
    assert code == 0 and out.startswith(f"usage: python -m shared {stage} ")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_program_stands_above_everything_it_uses():
    """Nothing in shared imports the program; training imports neither the settings nor anything above them."""
    above = [p for p in (ROOT / "shared").rglob("*.py") if p.parent.name != "cli" and p.name != "__main__.py"]
    for path in above:
        assert not any(name == "shared.cli" or name.startswith("shared.cli.") for name in _imports(path)), path
    for path in (ROOT / "shared" / "train").glob("*.py"):
        upward = {n for n in _imports(path) if n.startswith(("shared.settings", "shared.base", "shared.cli"))}
        assert not upward, f"{path.name} imports {upward}"
    assert not (ROOT / "shared" / "train" / "__main__.py").exists()


# -- numeric options -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_every_numeric_option_is_covered(stage):
    parser = STAGES[stage].build_parser()
    numeric = {a.option_strings[-1] for a in parser._actions if a.type not in (None, str, Path)}
    assert numeric == set(REFUSED[stage]) == set(ACCEPTED[stage])


@pytest.mark.parametrize(("stage", "option", "value"),
                         [(s, o, v) for s, options in REFUSED.items() for o, values in options.items() for v in values])
def test_a_bad_number_is_refused_naming_the_option(stage, option, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        STAGES[stage].parse_args([*REQUIRED.get(stage, []), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected " in err and value in err, err


@pytest.mark.parametrize(("stage", "option"), [(s, o) for s, options in ACCEPTED.items() for o in options])
def test_a_good_number_is_read(stage, option):
    dest, text, value = ACCEPTED[stage][option]
    assert getattr(STAGES[stage].parse_args([*REQUIRED.get(stage, []), option, text]), dest) == value


def test_pretrain_absent_options_take_the_settings_values_and_given_ones_replace_them():
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


def test_tuning_stages_absent_options_take_their_defaults_and_given_ones_replace_them():
    task = finetune.make_task(finetune.parse_args([]))  # does the speech end here? every example
    assert task.class_names == ("continues", "ends") and len(task.train) == 624
    assert finetune.make_task(finetune.parse_args(["--task", "real-or-shuffled"])).class_names == ("shuffled", "real")
    assert task.keep == "last" and finetune.make_task(finetune.parse_args(["--task", "who-speaks"])).keep == "first"
    cut = finetune.make_task(finetune.parse_args(["--labels", "40"]))
    assert len(cut.train) == 40 and cut.keep == "last"  # cutting the labels keeps the task's crop
    assert len(finetune.make_task(finetune.parse_args(["--task", "who-speaks"])).class_names) == 4
    assert len(finetune.make_task(finetune.parse_args(["--task", "who-speaks", "--characters", "2"])).class_names) == 2
    for name in ("finetune", "sft", "dpo"):
        absent = STAGES[name].parse_args([*REQUIRED.get(name, []), "--lora-rank", "2"])
        given = STAGES[name].parse_args([*REQUIRED.get(name, []), "--lora-rank", "2", "--lora-alpha", "3",
                                         "--lora-dropout", "0.5", "--lora-targets", "qkv"])
        # absent: alpha twice the rank (a scale of 2), no dropout, qkv and out_proj in both blocks
        for args, scaling, dropout, targets in [(absent, 2.0, 0.0, 4), (given, 1.5, 0.5, 2)]:
            model = models.lora_from_args(GPTModel(TINY), args, "GPTModel")
            layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
            assert len(layers) == targets and {(m.scaling, m.dropout.p) for m in layers} == {(scaling, dropout)}


# -- options that contradict each other ------------------------------------------------------------


@pytest.mark.parametrize(("stage", "argv", "message"), [
    ("pretrain", ["--init", "a.pt", "--emb", "64", "--model", "gpt"], "from --init a.pt: leave out --model, --emb"),
    ("pretrain", ["--init", "a.pt", "--resume"], "--resume continues --out's own run"),
    ("pretrain", ["--chapter7", "--steps", "3"], "chapter 7's exact recipe for --setting: leave out --steps"),
    ("finetune", ["--method", "lora"], "--method lora needs --lora-rank R"),
    ("finetune", ["--method", "frozen", "--lora-rank", "4"], "--lora-rank is for --method lora, not frozen"),
    ("finetune", ["--lora-alpha", "8"], "--lora-alpha set LoRA up, but this run applies none: add --lora-rank R"),
    ("finetune", ["--characters", "3"], "--characters is for --task who-speaks"),
    ("finetune", ["--labels", "100000"], "--labels 100000: the task has only"),
    ("finetune", ["--task", "who-speaks", "--characters", "1"], "n_characters must be at least 2"),
    ("finetune", ["--gpt2-weights", "w"], "--gpt2-weights is for --base gpt2"),
    ("finetune", ["--init", "nowhere.pt"], "no checkpoint at nowhere.pt"),
    ("finetune", ["--init", "a.pt", "--base", "gpt2"], "argument --base: not allowed with argument --init"),
    ("sft", ["--lora-dropout", "0.1", "--lora-targets", "qkv"], "--lora-dropout and --lora-targets set LoRA up"),
    ("dpo", ["--init", "nowhere.pt"], "no checkpoint at nowhere.pt"),
])
def test_contradicting_options_are_refused_naming_them(stage, argv, message):
    code, _, err = run(stage, *argv)
    assert code == 2 and f"python -m shared {stage}: error: " in err and message in err, err


def test_init_and_base_say_where_a_stage_starts(monkeypatch):
    calls = []

    def fake_load_base(setting, source, device, *, gpt2_weights=None):
        calls.append((setting.name, source, gpt2_weights))
        return models.Start(GPTModel(TINY), None, "fake")

    monkeypatch.setattr(models, "load_base", fake_load_base)
    monkeypatch.setattr(models, "chapter7_is_complete", lambda setting: True)
    setting, cpu = pick_setting("cpu", "cpu"), torch.device("cpu")
    for argv in ([], ["--base", "chapter7"], ["--base", "gpt2", "--gpt2-weights", "w"]):
        models.load_start(finetune.parse_args(argv), setting, cpu)
    assert calls == [("cpu", "chapter7", None), ("cpu", "chapter7", None), ("cpu", "gpt2", Path("w"))]


# -- the finetune methods --------------------------------------------------------------------------



def test_each_finetune_method_trains_what_it_says():
    head = TINY.emb_dim * 3 + 3  # three classes
    counted = {}
    for method in finetune.METHODS:
        args = finetune.parse_args(["--method", method, "--seed", "1"] + (["--lora-rank", "2"] if method == "lora"
                                                                          else []))
        torch.manual_seed(0)
        body = GPTModel(TINY)
        pretrained = {name: p.detach().clone() for name, p in body.state_dict().items()}
        classifier = finetune.build_classifier(body, 3, method, args)
        counted[method] = count_trainable(classifier)[0]
        moved = [n for n, p in classifier.body.state_dict().items()
                 if n in pretrained and not torch.equal(p, pretrained[n])]
        assert bool(moved) == (method == "scratch"), method  # only scratch starts from other weights
    body_params = sum(p.numel() for p in GPTModel(TINY).parameters())
    emb, rank = TINY.emb_dim, 2
    lora = TINY.n_layers * rank * ((emb + 3 * emb) + (emb + emb))  # A and B of qkv and of out_proj in every block
    assert counted["frozen"] == head
    assert counted["full"] == counted["scratch"] == body_params - TINY.vocab_size * TINY.emb_dim + head  # untied head
    assert counted["lora"] == head + lora


# -- every stage, chained on one tiny model --------------------------------------------------------

SIZES = ["--setting", "cpu", "--vocab", "300", "--context", "64", "--emb", "32", "--heads", "2", "--layers", "1",
         "--dropout", "0", "--batch-size", "8", "--eval-every", "4", "--eval-batches", "1", "--quiet"]


@pytest.mark.slow
def test_every_stage_runs_chained_on_one_tiny_model(tmp_path, monkeypatch):
    """pretrain -> pretrain --init, pretrain -> finetune, pretrain -> sft -> dpo: each reads what the last wrote."""
    text = tmp_path / "text.txt"
    text.write_text(tiny_shakespeare()[:40_000], encoding="utf-8")  # the first part: the stages' data come later
    monkeypatch.setenv("LLM_DATA_DIR", str(tmp_path / "data"))  # the small text's tokenizer is cached there
    code, _, err = run("pretrain", "--data", str(text), *SIZES, "--steps", "4", "--out", str(tmp_path / "pre"))
    assert code == 0, err
    pre = tmp_path / "pre" / "checkpoint.pt"
    (base, tokenizer, _), state = models.read_model(pre)
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.vocab_size == 300 == base.config.vocab_size
    assert state["step"] == 4

    # pretrain --init: the checkpoint's weights, a fresh optimizer and schedule (an lr of 1e-12 moves nothing)
    code, _, err = run("pretrain", "--data", str(text), "--init", str(pre), "--setting", "cpu", "--batch-size", "8",
                       "--steps", "1", "--lr", "1e-12", "--warmup", "0", "--eval-batches", "1", "--quiet",
                       "--out", str(tmp_path / "more"))
    assert code == 0, err
    (more, more_tokenizer, _), more_state = models.read_model(tmp_path / "more" / "checkpoint.pt")
    assert more_state["step"] == 1 and more_tokenizer.merges == tokenizer.merges
    assert more_state["optimizer"]["state"][0]["step"] == 1  # a fresh AdamW, one step old
    for name, p in more.state_dict().items():
        torch.testing.assert_close(p, base.state_dict()[name], rtol=0, atol=1e-8)

    # finetune: LoRA, merged into the saved body; the saved classifier scores what the run reported
    code, out, err = run("finetune", "--init", str(pre), "--lora-rank", "2", "--steps", "3", "--batch-size", "8",
                         "--labels", "40", "--device", "cpu", "--quiet", "--out", str(tmp_path / "task"))
    assert code == 0, err
    record = json.loads((tmp_path / "task" / "history.json").read_text())
    assert record["majority_baseline"] == 0.5 and record["method"] == "lora" and len(record["step_losses"]) == 3
    assert record["task"] == "does the speech end here?" and record["crop_keeps"] == "last"
    assert record["trainable_parameters"] < record["total_parameters"] / 10
    assert f"held-out accuracy {record['accuracy']:.3f} (majority baseline 0.500)" in out
    (body, _, _), saved = models.read_model(tmp_path / "task" / "classifier.pt")
    assert body.config == base.config and not any(isinstance(m, LoRALinear) for m in body.modules())
    assert saved["crop_keeps"] == "last"  # so that a reader crops as the run did
    classifier = SequenceClassifier(body, 2, pooling=saved["pooling"])
    classifier.head.load_state_dict(saved["head"])
    task = finetune.make_task(finetune.parse_args([]))
    ids = encode_texts(tokenizer.encode_ordinary, [e.text for e in task.test], 64, crop=True, keep=saved["crop_keeps"])
    assert accuracy(classifier, [(i, e.label) for i, e in zip(ids, task.test, strict=True)], 0) == record["accuracy"]

    # sft: chat tokens after the old ids, recorded in the checkpoint for dpo
    code, _, err = run("sft", "--init", str(pre), "--steps", "2", "--batch-size", "4", "--conversations", "40",
                       "--device", "cpu", "--quiet", "--out", str(tmp_path / "sft"))
    assert code == 0, err
    (tuned, chat_tokenizer, _), _ = models.read_model(tmp_path / "sft" / "checkpoint.pt")
    assert [chat_tokenizer.special_tokens[name] for name in CHAT_TOKENS] == [300, 301] == [
        tuned.config.vocab_size - 2, tuned.config.vocab_size - 1]
    record = json.loads((tmp_path / "sft" / "history.json").read_text())
    assert len(record["step_losses"]) == 2 and 0 < record["heldout_response_loss"] < 10

    # sft with LoRA: by default the output head is adapted too, so the end-of-turn row (which starts as the
    # mean of the old rows) trains; with attention alone it stays where it started and no reply ever ends
    start_row = base.out_head.weight.mean(dim=0)
    for name, targets in [("lora", []), ("lora-attention", ["--lora-targets", "qkv", "out_proj"])]:
        code, _, err = run("sft", "--init", str(pre), "--lora-rank", "2", *targets, "--steps", "2", "--batch-size",
                           "4", "--conversations", "40", "--device", "cpu", "--quiet", "--out", str(tmp_path / name))
        assert code == 0, err
        (lora_tuned, _, _), _ = models.read_model(tmp_path / name / "checkpoint.pt")
        end_row = lora_tuned.out_head.weight[chat_tokenizer.special_tokens[CHAT_TOKENS[1]]]
        assert torch.allclose(end_row, start_row, atol=1e-6) == (name == "lora-attention"), name

    # dpo: from the SFT checkpoint, against a frozen copy of it: the first loss is log 2 (policy == reference)
    code, _, err = run("dpo", "--init", str(pre))
    assert code == 2 and "--init must be written by `sft`" in err
    code, _, err = run("dpo", "--init", str(tmp_path / "sft" / "checkpoint.pt"), "--steps", "2", "--batch-size", "4",
                       "--pairs", "40", "--device", "cpu", "--quiet", "--out", str(tmp_path / "dpo"))
    assert code == 0, err
    record = json.loads((tmp_path / "dpo" / "history.json").read_text())
    assert len(record["steps"]) == 2 and math.isclose(record["steps"][0]["loss"], math.log(2), abs_tol=1e-6)
    assert set(record["steps"][0]) >= {"loss", "chosen_reward", "rejected_reward", "accuracy"}
    (policy, _, _), _ = models.read_model(tmp_path / "dpo" / "checkpoint.pt")
    assert policy.config == tuned.config


def test_pretrain_chapter7_trains_where_the_chapters_look_and_keeps_a_complete_checkpoint(tmp_path, monkeypatch):
    where = tmp_path / "checkpoints" / "ch07_gpt_cpu.pt"
    monkeypatch.setattr(Setting, "checkpoint_path", lambda self, name="ch07_gpt": where)
    trained = []

    def fake_recipe(setting, device, *, path, progress):  # stands in for shared.base.pretrain_chapter7 (tested there)
        trained.append((setting.name, path))
        model = GPTModel(dataclasses.replace(TINY, vocab_size=setting.vocab_size))
        history = History([4.0, 3.0], [{"step": 2, "tokens_seen": 64, "train_loss": 3.5, "val_loss": 3.6, "lr": 1e-3,
                                        "elapsed_s": 0.1}])
        save_checkpoint(path, model, step=setting.run.max_steps, history=dataclasses.asdict(history))
        return model, history

    monkeypatch.setattr(pretrain, "pretrain_chapter7", fake_recipe)
    monkeypatch.setattr(pretrain, "bits_per_character", lambda *args, **kwargs: 2.5)  # tested in test_train.py
    for _ in range(2):  # the second run finds the checkpoint complete and keeps it
        code, out, err = run("pretrain", "--chapter7", "--setting", "cpu", "--device", "cpu", "--out", str(tmp_path))
        assert code == 0, err
    assert trained == [("cpu", where)] and "already holds chapter 7's whole run" in out
    record = json.loads((tmp_path / "history.json").read_text())
    assert record["step_losses"] == [4.0, 3.0] and record["checkpoint"] == str(where) and record["val_bpc"] == 2.5
    assert (tmp_path / "loss.png").exists()
