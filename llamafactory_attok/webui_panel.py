"""LlamaBoard's "AttTok configurations" panel and chat checkbox: components, labels, values → ``attok_*`` keys.

Plain gradio and AttTok arguments only; ``lf_patches.webui`` places the panel in LF's Train tab (next to "LoRA
configurations"), registers it with LF's element manager and routes its values into the run. Labels follow
LlamaBoard's i18n shape (``LOCALES[name][lang] = {"label", "info"}``): English and Chinese written out, the other
LlamaBoard languages fall back to English.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .args import AttTokArguments, parse_attok_dict
from .errors import AttTokError
from .trainer_log import latest_per_step
from .vocab import load_vocab

LANGS = ("en", "ru", "zh", "ko", "ja")
# element name -> (English label, English info, Chinese label, Chinese info)
_TEXTS: dict[str, tuple[str, str, str, str]] = {
    "attok_tab": ("AttTok configurations", "", "AttTok 参数设置", ""),
    "attok_enable": ("Enable AttTok", "Attribute tokens with ACC and ACM (finetuning type lora, full or freeze).",
                     "启用 AttTok", "属性词元，配合 ACC 与 ACM（微调方法为 lora、full 或 freeze）。"),
    "attok_vocab": ("Attribute vocabulary", "A YAML file of the data dir whose name contains \"vocab\", or any "
                    "path; empty: derived from the <|…|> tokens in the answers.", "属性词表",
                    "数据目录中文件名含 “vocab” 的 YAML 文件或任意路径；留空则从答案中的 <|…|> 词元推导。"),
    "attok_acc_gamma": ("ACC γ", "Residual scale of the ACC adapter (Eq. 7), ≥ 0. Paper: 0.1.",
                        "ACC γ", "ACC 适配器的残差系数（式 7），≥ 0。论文取 0.1。"),
    "attok_ema": ("Prototype EMA μ", "Momentum of the visual prototypes (Eq. 5), in [0, 1). Paper: 0.99.",
                  "原型 EMA μ", "视觉原型的动量（式 5），取值 [0, 1)。论文取 0.99。"),
    "attok_tau": ("ACM τ", "Temperature of the ACM loss (Eq. 9), > 0. Paper: 1.",
                  "ACM τ", "ACM 损失的温度（式 9），> 0。论文取 1。"),
    "attok_acm_weight": ("ACM weight λ", "Initial weight of ACM in NTP + λ·ACM (§4.3), ≥ 0. Paper: 1.",
                         "ACM 权重 λ", "NTP + λ·ACM 中 ACM 的初始权重（§4.3），≥ 0。论文取 1。"),
    "attok_acm_schedule": ("λ schedule", "How λ decays to 0 by the last step.",
                           "λ 调度", "λ 在最后一步前衰减到 0 的方式。"),
    "attok_acc": ("ACC adapter", "Refine visual tokens with the attribute books (Eq. 6-7).",
                  "ACC 适配器", "用属性词典细化视觉词元（式 6-7）。"),
    "attok_acm": ("ACM loss", "Contrastive alignment of attribute tokens (Eq. 8-9).",
                  "ACM 损失", "属性词元的对比对齐（式 8-9）。"),
    "attok_show_tokens": ("Show attribute tokens", "Keep <|…|> attribute tokens in the shown answers.",
                          "显示属性词元", "在显示的回答中保留 <|…|> 属性词元。"),
}
PANEL_KEYS = ("attok_vocab", "attok_acc_gamma", "attok_ema", "attok_tau", "attok_acm_weight", "attok_acm_schedule",
              "attok_acc", "attok_acm")


def locales() -> dict[str, dict[str, dict[str, str]]]:
    """LlamaBoard ``LOCALES`` entries for every AttTok element."""
    entries = {}
    for name, (en_label, en_info, zh_label, zh_info) in _TEXTS.items():
        en = {"label": en_label, **({"info": en_info} if en_info else {})}
        zh = {"label": zh_label, **({"info": zh_info} if zh_info else {})}
        entries[name] = {lang: (zh if lang == "zh" else en) for lang in LANGS}
    return entries


def vocab_choices(dataset_dir: str | None) -> list[str]:
    """``*vocab*.yaml`` files of the data dir, as paths (the dropdown also takes any typed path)."""
    folder = Path(dataset_dir or "")
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.glob("*vocab*.y*ml") if p.is_file())


def build_train_panel(dataset_dir_value: str | None = None) -> dict[str, Any]:
    """The accordion and its components (created in the current gradio context); element name → component."""
    import gradio as gr

    defaults = AttTokArguments()
    with gr.Accordion(open=False) as attok_tab:
        with gr.Row():
            attok_enable = gr.Checkbox(value=False)
            attok_vocab = gr.Dropdown(choices=vocab_choices(dataset_dir_value), value="", allow_custom_value=True,
                                      scale=3)
        with gr.Row():
            attok_acc_gamma = gr.Number(value=defaults.attok_acc_gamma)
            attok_ema = gr.Number(value=defaults.attok_ema)
            attok_tau = gr.Number(value=defaults.attok_tau)
            attok_acm_weight = gr.Number(value=defaults.attok_acm_weight)
        with gr.Row():
            attok_acm_schedule = gr.Dropdown(choices=["linear", "cosine", "constant"],
                                             value=defaults.attok_acm_schedule)
            attok_acc = gr.Checkbox(value=defaults.attok_acc)
            attok_acm = gr.Checkbox(value=defaults.attok_acm)
    return {"attok_tab": attok_tab, "attok_enable": attok_enable, "attok_vocab": attok_vocab,
            "attok_acc_gamma": attok_acc_gamma, "attok_ema": attok_ema, "attok_tau": attok_tau,
            "attok_acm_weight": attok_acm_weight, "attok_acm_schedule": attok_acm_schedule, "attok_acc": attok_acc,
            "attok_acm": attok_acm}


def refresh_vocab_choices(dataset_dir: str):
    import gradio as gr

    return gr.Dropdown(choices=vocab_choices(dataset_dir))


def panel_args(values: dict[str, Any]) -> dict[str, Any]:
    """Panel values (element name → value) → validated ``attok_*`` keys; {} when the panel is off.

    Raises :class:`AttTokError` with the same text the command line gives for the same values.
    """
    if not values.get("attok_enable"):
        return {}
    raw = {"attok": True, **{k: values[k] for k in PANEL_KEYS if k in values}}
    if raw.get("attok_vocab") in (None, ""):
        raw.pop("attok_vocab", None)
    parsed = parse_attok_dict(raw)  # the CLI's own checks and messages
    if parsed.attok_vocab:
        load_vocab(parsed.attok_vocab)  # a missing or malformed file: the CLI's message, before launching
    return {k: v for k, v in parsed.to_dict().items() if k in raw}


def panel_error(values: dict[str, Any]) -> str:
    """The error text for invalid panel values, or "" (LlamaBoard shows it before launching)."""
    try:
        panel_args(values)
    except AttTokError as err:
        return str(err)
    return ""


def add_attok_curves(figure, trainer_log: list[dict[str, Any]]) -> None:
    """Draw ``loss_ntp`` and ``loss_acm`` of an AttTok run into LlamaBoard's loss plot (nothing for other runs)."""
    if not figure.axes:
        return
    axis = figure.axes[0]
    drawn = False
    for key, color in (("loss_ntp", "#ff7f0e"), ("loss_acm", "#2ca02c")):
        points = latest_per_step(trainer_log, key)  # a resumed run logs the steps after its checkpoint again
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, color=color, label=key)
            drawn = True
    if drawn:
        axis.legend()
