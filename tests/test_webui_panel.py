"""LlamaBoard's AttTok panel in-process: placed next to LoRA, registered, labelled (en/zh), validated with the CLI's
text, its values reaching the run's arguments, saved and loaded; the loss plot's AttTok curves; the chat checkbox."""

from __future__ import annotations

import gc
import json
import os
import re

import pytest
from conftest import REPO

ARTIFACTS = REPO / ".artifacts"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import llamafactory.webui.interface as interface
    from llamafactory.webui.engine import Engine

    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("llamaboard"))  # LlamaBoard writes llamaboard_cache/ into the working dir
    try:
        interface.create_ui()
        yield [o for o in gc.get_objects() if isinstance(o, Engine)][-1]
    finally:
        os.chdir(here)


def _data(engine, **values):
    manager = engine.manager
    data = {elem: getattr(elem, "value", None) for elem in manager._id_to_elem.values()}
    base = {"top.model_name": "tiny", "top.model_path": "/m", "train.dataset": ["d"], "train.output_dir": "o"}
    for elem_id, value in {**base, **values}.items():
        data[manager.get_elem_by_id(elem_id)] = value
    return data


def test_panel_sits_next_to_lora_and_is_registered(engine):
    manager = engine.manager
    names = {k.split(".", 1)[1] for k in manager._id_to_elem if k.startswith("train.attok")}
    assert names == {"attok_tab", "attok_enable", "attok_vocab", "attok_acc_gamma", "attok_ema", "attok_tau",
                     "attok_acm_weight", "attok_acm_schedule", "attok_acc", "attok_acm"}
    assert "infer.attok_show_tokens" in manager._id_to_elem
    lora, panel = manager.get_elem_by_id("train.lora_tab"), manager.get_elem_by_id("train.attok_tab")
    siblings = lora.parent.children
    assert siblings.index(panel) == siblings.index(lora) + 1


@pytest.mark.parametrize("lang", ["en", "zh", "ja"])
def test_labels_follow_the_language(engine, lang):
    from llamafactory.webui.locales import LOCALES

    updates = engine.change_lang(lang)
    enable = engine.manager.get_elem_by_id("train.attok_enable")
    assert updates[enable].label == LOCALES["attok_enable"][lang]["label"]
    assert LOCALES["attok_tab"]["zh"]["label"] == "AttTok 参数设置"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("attok_acc_gamma", -0.5, "attok_acc_gamma must be >= 0, got -0.5."),
    ("attok_ema", 1.0, "attok_ema must be in [0, 1), got 1.0."),
    ("attok_tau", 0, "attok_tau must be > 0, at least 0.01 and at most 100.0 (the paper: 1), got 0.0: cosine "
                     "similarities divided by a tinier τ overflow the ACM loss (Eq. 9), a huger one flattens it to a "
                     "constant."),
    ("attok_vocab", "/nowhere/vocab.yaml", "attok_vocab: file /nowhere/vocab.yaml does not exist."),
])
def test_bad_panel_values_are_the_clis_error_before_launch(engine, key, value, message):
    from llamafactory_attok.args import parse_attok_dict
    from llamafactory_attok.errors import AttTokError

    data = _data(engine, **{"train.attok_enable": True, f"train.{key}": value})
    assert engine.runner._initialize(data, True, True) == message
    if key != "attok_vocab":
        with pytest.raises(AttTokError, match=re.escape(message)):
            parse_attok_dict({"attok": True, key: value})


def test_panel_values_reach_the_run_and_nothing_when_off(engine, sample_data):
    vocab = str(sample_data / "retina_vocab.yaml")
    on = _data(engine, **{"train.attok_enable": True, "train.attok_vocab": vocab, "train.attok_acc_gamma": 0.2,
                          "train.attok_acm": False, "train.attok_acm_schedule": "cosine"})
    assert engine.runner._initialize(on, True, True) == ""
    args = engine.runner._parse_train_args(on)
    assert args["attok"] is True and args["attok_vocab"] == vocab and args["attok_acc_gamma"] == 0.2
    assert args["attok_acm"] is False and args["attok_acm_schedule"] == "cosine"
    from llamafactory.webui.common import _clean_cmd

    assert _clean_cmd(args)["attok_acm"] is False  # kept in training_args.yaml although LF drops False values
    off = engine.runner._parse_train_args(_data(engine))
    assert not any(k.startswith("attok") for k in off)
    extra = _data(engine, **{"train.extra_args": json.dumps({"attok": True, "attok_tau": 2.0})})
    assert engine.runner._parse_train_args(extra)["attok_tau"] == 2.0  # the Extra-arguments route still works


def test_vocab_dropdown_lists_the_data_dirs_vocabularies(sample_data):
    from llamafactory_attok.webui_panel import vocab_choices

    assert str(sample_data / "retina_vocab.yaml") in vocab_choices(str(sample_data))
    assert vocab_choices("/nowhere") == []


def test_save_and_load_arguments_round_trip_the_panel(engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manager = engine.manager
    data = _data(engine, **{"train.attok_enable": True, "train.attok_acc_gamma": 0.3, "train.attok_ema": 0.95,
                            "train.attok_acm_schedule": "constant", "train.config_path": "attok.yaml",
                            "top.lang": "en"})
    engine.runner.save_args(data)
    loaded = engine.runner.load_args("en", "attok.yaml")
    values = {manager.get_id_by_elem(e): v for e, v in loaded.items()}
    assert values["train.attok_enable"] is True and values["train.attok_acc_gamma"] == 0.3
    assert values["train.attok_ema"] == 0.95 and values["train.attok_acm_schedule"] == "constant"


def test_loss_plot_shows_the_attok_curves():
    from llamafactory.webui.control import gen_loss_plot

    logs = [{"current_steps": i, "loss": 3.0 / i, "loss_ntp": 2.5 / i, "loss_acm": 0.5 / i} for i in range(1, 9)]
    figure = gen_loss_plot(logs)
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert {"original", "smoothed", "loss_ntp", "loss_acm"} <= set(labels)
    ARTIFACTS.mkdir(exist_ok=True)
    figure.savefig(ARTIFACTS / "webui_loss_curves.png")
    vanilla = gen_loss_plot([{"current_steps": 1, "loss": 1.0}, {"current_steps": 2, "loss": 0.9}])
    assert [line.get_label() for line in vanilla.axes[0].lines] == ["original", "smoothed"]


def test_chat_checkbox_becomes_attok_show_tokens(engine):
    """LF's load_model is a generator (status lines for Gradio to stream): the wrapper stays one and passes them on."""
    import inspect

    seen = {}

    def fake(self, data):  # a generator, as LF's WebChatModel.load_model
        seen["extra"] = data[engine.manager.get_elem_by_id("infer.extra_args")]
        yield "Loading model..."
        yield "Model loaded, now you can chat with your model!"

    from llamafactory_attok.lf_patches import webui

    wrapped = webui.wrap_chat_load(fake)
    assert inspect.isgeneratorfunction(wrapped)
    shown = list(wrapped(engine.chatter, _data(engine, **{"infer.attok_show_tokens": True,
                                                          "infer.extra_args": '{"a": 1}'})))
    assert shown == ["Loading model...", "Model loaded, now you can chat with your model!"]
    assert json.loads(seen["extra"]) == {"a": 1, "attok_show_tokens": True}
    list(wrapped(engine.chatter, _data(engine, **{"infer.attok_show_tokens": False, "infer.extra_args": '{"a": 1}'})))
    assert json.loads(seen["extra"]) == {"a": 1}


def test_llamaboard_finds_this_environments_launcher_when_the_venv_is_not_activated(tmp_path):
    """`.venv/bin/llamafactory-cli webui` without the venv on PATH: training starts with this environment's
    llamafactory-cli (LF spawns it by name); an existing one on PATH is left alone (vanilla LF unchanged)."""
    import shutil
    import sys
    from pathlib import Path

    from llamafactory_attok.lf_patches.webui import launcher_on_path

    bindir = str(Path(sys.executable).parent)
    environ = {"PATH": str(tmp_path)}  # a PATH without any llamafactory-cli
    assert launcher_on_path(environ) == bindir
    assert environ["PATH"] == f"{bindir}:{tmp_path}"
    assert shutil.which("llamafactory-cli", path=environ["PATH"]) == str(Path(bindir) / "llamafactory-cli")
    other = tmp_path / "other"
    other.mkdir()
    (other / "llamafactory-cli").write_text("#!/bin/sh\n")
    (other / "llamafactory-cli").chmod(0o755)
    environ = {"PATH": str(other)}
    assert launcher_on_path(environ) is None and environ["PATH"] == str(other)


def test_panel_texts_are_plain_text():
    """Gradio renders info texts as Markdown: no `*`, `_` pairs or backticks that would be eaten or shown raw."""
    from llamafactory_attok.webui_panel import _TEXTS

    for name, (label, info, label_zh, info_zh) in _TEXTS.items():
        for text in (label, info, label_zh, info_zh):
            assert "*" not in text and "`" not in text, (name, text)
