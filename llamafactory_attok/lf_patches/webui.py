"""LlamaBoard (``webui.*``): ``attok_*: false`` kept in the WebUI's arguments, the "AttTok configurations" panel next
to "LoRA configurations" with its values in the run, the ``loss_ntp`` / ``loss_acm`` curves, and the Chat tab's
"show attribute tokens" checkbox. The panel itself is plain gradio in :mod:`llamafactory_attok.webui_panel`."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import shutil
import sys
from typing import Any

from ..args import is_attok_key
from ..webui_panel import PANEL_KEYS
from . import warn_not_patched


def _wrap_clean_cmd(original):
    """The WebUI drops every ``False`` value before writing training_args.yaml; keep ``attok_*: false``."""

    @functools.wraps(original)
    def clean_cmd(args: dict[str, Any]) -> dict[str, Any]:
        cleaned = original(args)
        cleaned.update({k: v for k, v in args.items() if is_attok_key(k) and v is False})
        return cleaned

    return clean_cmd


def patch_common(module, clean_cmd) -> None:
    module._clean_cmd = _wrap_clean_cmd(clean_cmd)


# ---- LlamaBoard: the AttTok panel, its values, the curves, the chat checkbox ------------------------------------


def _builder_locals() -> dict[str, Any]:
    """The local variables of the LlamaBoard tab builder whose ``with`` block is closing (the caller of
    ``_WatchedBlock.__exit__``). The only frame access of the plugin; it depends on these LF 0.9.5 lines, pinned by
    ``tests/test_webui_panel.py``: ``webui/components/train.py`` ``input_elems = engine.manager.get_base_elems()``,
    ``elem_dict = dict()``, ``dataset_dir = gr.Textbox(...)``, ``with gr.Accordion(open=False) as lora_tab:``;
    ``webui/components/infer.py`` ``input_elems``, ``elem_dict``, ``extra_args`` in a ``gr.Row()`` before
    ``load_btn``. LF has no public API to add components to a tab before its buttons are bound."""
    return sys._getframe(2).f_locals


class _WatchedBlock:
    """A gradio layout block whose closing may add AttTok components right after it (see :class:`_LayoutProxy`)."""

    def __init__(self, proxy: _LayoutProxy, block) -> None:
        self._proxy, self._block = proxy, block

    def __getattr__(self, name):
        return getattr(self._block, name)

    def __enter__(self):
        return self._block.__enter__()

    def __exit__(self, *exc):
        result = self._block.__exit__(*exc)
        if exc[0] is None:
            self._proxy.on_close(self._block, _builder_locals())
        return result


class _LayoutProxy:
    """Stands in for the ``gradio`` module inside one LlamaBoard tab builder. When the layout block that
    ``matches(block, builder_locals)`` closes, ``build(builder_locals)`` creates the AttTok components right after
    it and registers them in the builder's ``input_elems`` / ``elem_dict`` (before LF binds its buttons to them).
    A failure there is reported and leaves LlamaBoard as shipped (the Extra-arguments route still works)."""

    def __init__(self, gr, matches, build, where: str) -> None:
        self._gr, self._matches, self._build, self.where, self.done = gr, matches, build, where, False

    def __getattr__(self, name):
        value = getattr(self._gr, name)
        if name in ("Accordion", "Row") and not self.done:
            return lambda *args, **kwargs: _WatchedBlock(self, value(*args, **kwargs))
        return value

    def on_close(self, block, builder_locals: dict) -> None:
        if self.done or not self._matches(block, builder_locals):
            return
        self.done = True
        try:
            self._build(builder_locals)
        except Exception as err:  # noqa: BLE001 - LlamaBoard must keep working; said once, on stderr
            warn_not_patched(self.where, f"{type(err).__name__}: {err}")


def _build_train_panel(builder_locals: dict) -> None:
    from .. import webui_panel

    dataset_dir = builder_locals["dataset_dir"]
    elems = webui_panel.build_train_panel(getattr(dataset_dir, "value", None))
    builder_locals["input_elems"].update(e for name, e in elems.items() if name != "attok_tab")
    builder_locals["elem_dict"].update(elems)
    # listed when the dropdown is opened: no extra event on LF's own Data dir box (its change event reloads the
    # Dataset list, and Gradio hides a component while an event that outputs to it runs)
    elems["attok_vocab"].focus(webui_panel.refresh_vocab_choices, [dataset_dir], [elems["attok_vocab"]], queue=False)


def _build_chat_checkbox(builder_locals: dict) -> None:
    import gradio as gr

    with gr.Row():
        checkbox = gr.Checkbox(value=False)
    builder_locals["input_elems"].add(checkbox)
    builder_locals["elem_dict"]["attok_show_tokens"] = checkbox


def _wrap_tab_builder(original, component_module: str, matches, build, where: str):
    @functools.wraps(original)
    def create_tab(engine):
        module = importlib.import_module(component_module)
        real_gr = module.gr
        proxy = _LayoutProxy(real_gr, matches, build, where)
        module.gr = proxy
        try:
            elems = original(engine)
        finally:
            module.gr = real_gr
        if not proxy.done:
            warn_not_patched(where, "the place for the AttTok components was not found")
        return elems

    return create_tab


def patch_interface(module, create_train_tab, create_infer_tab) -> None:
    from llamafactory.webui.locales import LOCALES

    from ..webui_panel import locales

    module.create_train_tab = _wrap_tab_builder(
        create_train_tab, "llamafactory.webui.components.train", lambda block, f: f.get("lora_tab") is block,
        _build_train_panel, "LlamaBoard Train tab (AttTok panel)")
    module.create_infer_tab = _wrap_tab_builder(
        create_infer_tab, "llamafactory.webui.components.infer",
        lambda block, f: "extra_args" in f and "load_btn" not in f, _build_chat_checkbox,
        "LlamaBoard Chat tab (show attribute tokens)")
    for name, entry in locales().items():
        LOCALES.setdefault(name, entry)


def _panel_values(runner, data: dict, tab: str, names) -> dict[str, Any]:
    """Values of the AttTok elements in a LlamaBoard event's data ({} when the panel is not there)."""
    values = {}
    for name in names:
        try:
            values[name] = data[runner.manager.get_elem_by_id(f"{tab}.{name}")]
        except KeyError:
            return {}
    return values


_PANEL_NAMES = ("attok_enable", *PANEL_KEYS)


def _wrap_initialize(original):
    """Invalid panel values are LlamaBoard's usual pre-launch error, with the CLI's text."""

    @functools.wraps(original)
    def _initialize(self, data, do_train, from_preview):
        from ..webui_panel import panel_error

        error = original(self, data, do_train, from_preview)
        if error or not do_train:
            return error
        return panel_error(_panel_values(self, data, "train", _PANEL_NAMES))

    return _initialize


def _wrap_parse_webui_train_args(original):
    """Panel values become ``attok_*`` keys of the run (command preview, training_args.yaml, the run)."""

    @functools.wraps(original)
    def _parse_train_args(self, data):
        from ..webui_panel import panel_args

        args = original(self, data)
        args.update(panel_args(_panel_values(self, data, "train", _PANEL_NAMES)))
        return args

    return _parse_train_args


def launcher_on_path(environ=os.environ) -> str | None:
    """LF's Runner starts training as ``llamafactory-cli train …`` found on PATH. A LlamaBoard started as
    ``.venv/bin/llamafactory-cli webui`` without activating the venv has no such command on PATH, and *Start* fails
    with FileNotFoundError. Only in that case (where LF would fail anyway), put this interpreter's ``bin`` folder,
    which holds the ``llamafactory-cli`` of this environment, first on PATH. Returns the folder added, or None."""
    bindir = os.path.dirname(sys.executable)
    path = environ.get("PATH", "")
    if shutil.which("llamafactory-cli", path=path) is not None:
        return None
    if shutil.which("llamafactory-cli", path=bindir) is None:
        return None
    environ["PATH"] = f"{bindir}{os.pathsep}{path}" if path else bindir
    return bindir


def patch_runner(module, initialize, parse) -> None:
    added = launcher_on_path()
    if added is not None:
        sys.stderr.write(f"llamafactory-attok: `llamafactory-cli` was not on PATH; LlamaBoard will start training "
                         f"with {added}/llamafactory-cli (this environment's).\n")
    runner = module.Runner
    runner._initialize = _wrap_initialize(initialize)
    runner._parse_train_args = _wrap_parse_webui_train_args(parse)


def _wrap_loss_plot(original):
    @functools.wraps(original)
    def gen_loss_plot(trainer_log):
        from ..webui_panel import add_attok_curves

        figure = original(trainer_log)
        add_attok_curves(figure, trainer_log)
        return figure

    return gen_loss_plot


def patch_control(module, gen_loss_plot) -> None:
    module.gen_loss_plot = _wrap_loss_plot(gen_loss_plot)


def _with_show_tokens(chat, data: dict) -> dict:
    """The event data with ``attok_show_tokens: true`` merged into the Extra-arguments JSON when the box is ticked."""
    import json

    if not _panel_values(chat, data, "infer", ("attok_show_tokens",)).get("attok_show_tokens"):
        return data
    extra_elem = chat.manager.get_elem_by_id("infer.extra_args")
    try:
        extra = json.loads(data[extra_elem] or "{}")
    except json.JSONDecodeError:
        return data  # LF reports its own invalid-JSON error
    if not isinstance(extra, dict):
        return data
    return {**data, extra_elem: json.dumps({**extra, "attok_show_tokens": True})}


def wrap_chat_load(original):
    """The Chat tab's "show attribute tokens" box becomes ``attok_show_tokens`` in the model's extra arguments.

    LF's ``WebChatModel.load_model`` is a generator (it yields status messages); Gradio streams an event only when
    ``inspect.isgeneratorfunction(fn)``, so the wrapper is a generator wherever the original is one.
    """
    if inspect.isgeneratorfunction(original):

        @functools.wraps(original)
        def load_model(self, data):
            yield from original(self, _with_show_tokens(self, data))

        return load_model

    @functools.wraps(original)
    def load_model_plain(self, data):
        return original(self, _with_show_tokens(self, data))

    return load_model_plain


def patch_chatter(module, load_model) -> None:
    module.WebChatModel.load_model = wrap_chat_load(load_model)
