"""THE one place that touches LLaMA-Factory internals: the table of patch points, the version guard, the fail-safe.

Stdlib only: the startup hook (:mod:`llamafactory_attok._boot`) imports this module in every Python process to
learn which LF modules to watch. The patchers live one file per LF area (``parser``, ``loader``, ``adapter``,
``workflow``, ``tuner``, ``webui``, ``disabled``) and are imported only when LF imports the module they patch.

Fail-safe: :func:`patch_module` looks up every LF symbol a point replaces (:func:`require`) before its patcher runs,
so a module is patched whole or not at all. Any exception while patching is caught: LF stays exactly as shipped,
one warning names what could not be patched (:data:`PATCH_FAILURES` records it), and a later ``attok: true`` (or
loading an AttTok folder) stops with :func:`cannot_run_message`. On a stack outside the tested matrix
(:mod:`.stack`: LF versions, transformers range) nothing private is touched: only the public ``read_args`` is
wrapped, to refuse AttTok — unless the user opts in (``ATTOK_ALLOW_UNTESTED_LF=1``), which patches with the same
all-or-nothing checks and also requires every :data:`PRIVATE_CALLS` symbol to resolve before an AttTok run.

A symbol written ``"?name"`` in the table exists only on some tested LF versions (see its comment); the patcher then
receives ``None`` where it is absent. Every other symbol must exist.
"""

from __future__ import annotations

import importlib
import sys

from ..errors import install_excepthook
from .stack import (  # noqa: F401 - re-exported: the version guard lives with the table
    ALLOW_UNTESTED_ENV,
    TESTED_LF_VERSIONS,
    lf_version,
    refusal_reason,
    stack_allowed,
    tested_text,
    untested,
    untested_opt_in,
    warn_untested_once,
)

PATCHED_MARK = "__attok_patched__"


class Point:
    """One LF module's patch: ``patcher`` is "file:function" in this package, called as
    ``function(module, *symbols)`` with the LF ``symbols`` it replaces (dotted for class attributes)."""

    __slots__ = ("patcher", "symbols")

    def __init__(self, patcher: str, *symbols: str) -> None:
        self.patcher, self.symbols = patcher, symbols

    def __repr__(self) -> str:
        return f"Point({self.patcher!r}, {', '.join(map(repr, self.symbols))})"


PARSER = "llamafactory.hparams.parser"
LOADER = "llamafactory.model.loader"
ADAPTER = "llamafactory.model.adapter"
WORKFLOW = "llamafactory.train.sft.workflow"
TUNER = "llamafactory.train.tuner"

# THE table: LF module -> its patch. The startup hook watches exactly these modules.
POINTS: dict[str, Point] = {
    # pop and strictly parse attok_* keys, attach the run; USE_MCA and USE_MEGATRON_BRIDGE refuse AttTok
    # (?_parse_train_mbridge_args: LF main / 0.9.6.dev0 only; required once LF 0.9.5 support is dropped)
    PARSER: Point("parser:patch", "read_args", "_parse_train_args", "_parse_infer_args", "_parse_eval_args",
                  "_parse_train_mca_args", "?_parse_train_mbridge_args"),
    # tokens, rows, row-only training, the AttTok module on the model
    LOADER: Point("loader:patch", "patch_tokenizer", "patch_model", "init_adapter"),
    # LoRA's trainable_token_indices = the attribute rows
    ADAPTER: Point("adapter:patch", "LoraConfig"),
    # the AttTok trainer; attribute tokens out of eos_token_id; loss_ntp / loss_acm into trainer_log.jsonl
    WORKFLOW: Point("workflow:patch", "CustomSeq2SeqTrainer"),
    # copy the AttTok description and state into the export folder
    TUNER: Point("tuner:patch", "export_model"),
    # LlamaBoard: attok_*: false kept, the AttTok panel, its values in the run, the curves, the chat checkbox
    "llamafactory.webui.common": Point("webui:patch_common", "_clean_cmd"),
    "llamafactory.webui.interface": Point("webui:patch_interface", "create_train_tab", "create_infer_tab"),
    "llamafactory.webui.runner": Point("webui:patch_runner", "Runner._initialize", "Runner._parse_train_args"),
    "llamafactory.webui.control": Point("webui:patch_control", "gen_loss_plot"),
    "llamafactory.webui.chatter": Point("webui:patch_chatter", "WebChatModel.load_model"),
}
# ATTOK_DISABLE spellings (case and surrounding spaces ignored); any other value is reported and counts as "off".
DISABLE_TRUE = ("1", "true", "yes", "on")
DISABLE_FALSE = ("", "0", "false", "no", "off")
# With ATTOK_DISABLE set only these are patched: attok keys refused naming the variable; a warning (and a clear
# error) when an AttTok folder is loaded.
DISABLED_POINTS: dict[str, Point] = {
    PARSER: Point("disabled:patch_parser", "read_args"),
    LOADER: Point("disabled:patch", "load_model"),
}

# Private (underscore) or internal symbols of LF / transformers / PEFT the plugin *calls* or imports (module:name):
# every ``from <lib>.<submodule> import name`` in the package is listed (tests/test_lf_patches.py checks the list is
# complete and that each resolves on the installed stack). Not patched; listed so that an upgrade shows at once
# what may have moved. LF has no public API: all of its symbols count.
PRIVATE_CALLS: tuple[str, ...] = (
    "llamafactory.data.loader:_load_single_dataset",  # lf_data: one dataset through LF's own loader
    "llamafactory.data.parser:get_dataset_list",
    "llamafactory.data.parser:DatasetAttr",
    "llamafactory.data:SFTDataCollatorWith4DAttentionMask",
    "llamafactory.data:get_template_and_fix_tokenizer",
    "llamafactory.extras.constants:IGNORE_INDEX",
    "llamafactory.extras.env:VERSION",  # the version guard (stack.py)
    "llamafactory.extras.ploting:plot_loss",
    "llamafactory.hparams:DataArguments",
    "llamafactory.hparams:get_infer_args",  # eval.attribute_classifier, tuner export
    "llamafactory.model:load_model",
    "llamafactory.model:load_tokenizer",
    "llamafactory.train.callbacks:LogCallback",
    "llamafactory.train.callbacks:LogCallback._write_log",  # workflow: loss_ntp / loss_acm into trainer_log.jsonl
    "llamafactory.webui.locales:LOCALES",
    "llamafactory.webui.components.train:create_train_tab",  # webui: builder locals read in _builder_locals()
    "llamafactory.webui.components.infer:create_infer_tab",
    "transformers.trainer_utils:_is_peft_model",  # resume: transformers' own PEFT test
    "transformers.trainer_utils:get_last_checkpoint",
    "transformers.trainer:Trainer._load_from_checkpoint",  # resume: full / freeze weights
    "transformers.trainer:Trainer._load_optimizer_and_scheduler",  # trainer: AttTok state with the optimizer
    "transformers.conversion_mapping:get_model_conversion_mapping",  # resume: checkpoint key conversion
    "transformers.core_model_loading:rename_source_key",
    "transformers.core_model_loading:dot_natural_key",
    "transformers.core_model_loading:WeightConverter",
    "transformers.core_model_loading:WeightRenaming",
    "transformers.integrations:is_deepspeed_zero3_enabled",
    "transformers.utils:SAFE_WEIGHTS_INDEX_NAME",
    "transformers.utils:SAFE_WEIGHTS_NAME",
    "transformers.utils:WEIGHTS_INDEX_NAME",
    "transformers.utils:WEIGHTS_NAME",
    "transformers.utils:is_sagemaker_mp_enabled",
    "peft.tuners.trainable_tokens.layer:TrainableTokensLayer",
    "peft.utils.integrations:gather_params_ctx",
    "transformers.tokenization_utils_tokenizers:TokenizersBackend.backend_tokenizer",  # rows.show_attribute_tokens
)
# Internal symbols that exist only from some supported release on: module:name -> (package, first release). Used
# only behind a version switch (transformers_compat.py); resolved wherever the installed release has them.
VERSIONED_CALLS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "transformers.core_model_loading:PrefixChange": ("transformers", (5, 6, 0)),
}

# module name (or module.symbol) -> why it could not be patched; read when AttTok is asked for
PATCH_FAILURES: dict[str, str] = {}


class PatchPointMissing(AttributeError):
    """An LF symbol a patcher needs is gone (renamed or removed in another LF release)."""


def require(module, names) -> list:
    """The LF symbols ``names`` (dotted for attributes of classes) of ``module``, all looked up before any is
    replaced (all-or-nothing patching); :class:`PatchPointMissing` names the first that does not exist. A name
    written ``"?name"`` is optional (present on some tested LF versions only): ``None`` where absent."""
    found = []
    for name in names:
        optional = name.startswith("?")
        value = module
        for part in name.lstrip("?").split("."):
            if not hasattr(value, part):
                if optional:
                    value = None
                    break
                raise PatchPointMissing(f"{module.__name__}.{name} does not exist")
            value = getattr(value, part)
        found.append(value)
    return found


def expected_private_calls() -> list[str]:
    """:data:`PRIVATE_CALLS` plus the :data:`VERSIONED_CALLS` the installed releases should have."""
    from importlib.metadata import version

    from .stack import release

    expected = list(PRIVATE_CALLS)
    for symbol, (package, first) in VERSIONED_CALLS.items():
        got = release(version(package))
        if got is not None and got >= first:
            expected.append(symbol)
    return expected


def missing_private_calls() -> list[str]:
    """The :data:`PRIVATE_CALLS` that do not resolve here ("module:name (why)"); checked before an AttTok run on an
    untested stack (the opt-in), and by tests/test_lf_patches.py on every tested one."""
    missing = []
    for symbol in expected_private_calls():
        module_name, name = symbol.split(":")
        try:
            value = importlib.import_module(module_name)
            for part in name.split("."):
                value = getattr(value, part)
        except Exception as err:  # noqa: BLE001 - collected and reported together
            missing.append(f"{symbol} ({type(err).__name__}: {err})")
    return missing


def _patcher(point: Point):
    file, function = point.patcher.split(":")
    return getattr(importlib.import_module(f"{__name__}.{file}"), function)


def unsupported_version_reason() -> str:
    return refusal_reason()


def cannot_run_message(missing: dict[str, str]) -> str:
    points = "; ".join(f"{name}: {why}" for name, why in missing.items())
    return (
        f"AttTok cannot run on LLaMA-Factory {lf_version()} (this plugin is tested on {tested_text()}): "
        f"could not patch {points}. Vanilla LLaMA-Factory is unaffected; remove the attok keys (and AttTok "
        f"adapters), or install a tested version (docs/compatibility.md)."
    )


def unpatched(names: list[str]) -> dict[str, str]:
    """Of the LF modules ``names`` (imported now, so the hook runs), those that carry no AttTok patch, and why."""
    missing = {}
    for name in names:
        module = sys.modules.get(name) or importlib.import_module(name)
        if not getattr(module, PATCHED_MARK, False):
            missing[name] = PATCH_FAILURES.get(name, "never patched (imported before the plugin's hook?)")
    return missing


def warn_not_patched(name: str, why: str) -> None:
    sys.stderr.write(
        f"llamafactory-attok: could not patch {name} ({why}) on LLaMA-Factory {lf_version()}; LLaMA-Factory runs "
        "as shipped, and AttTok runs will stop with an error.\n"
    )


def record_failure(name: str, err: BaseException) -> None:
    PATCH_FAILURES[name] = f"{type(err).__name__}: {err}"
    warn_not_patched(name, PATCH_FAILURES[name])


def _apply_point(name: str, module, point: Point) -> None:
    found = require(module, point.symbols)
    _patcher(point)(module, *found)
    setattr(module, PATCHED_MARK, True)


def patch_module(name: str, module) -> None:
    """Patch one freshly imported LF module (called by the startup hook); idempotent, never raises.

    On a tested stack (or an untested one the user opted into) every point is patched whole or not at all; a
    failure is recorded in :data:`PATCH_FAILURES` and reported once. Elsewhere only the parser's public
    ``read_args`` is wrapped.
    """
    point = POINTS.get(name)
    if point is None or getattr(module, PATCHED_MARK, False):
        return
    install_excepthook()
    supported = False
    try:
        supported = stack_allowed()
        if supported:
            warn_untested_once()
            _apply_point(name, module, point)
            return
    except Exception as err:  # noqa: BLE001 - LF must stay usable; recorded and reported, refused on use
        record_failure(name, err)
    if name != PARSER:
        return
    try:  # unsupported LF, or the full parser patch failed: only refuse AttTok at the public read_args
        from .parser import guard_read_args

        if supported:
            guard_read_args(module, lambda: cannot_run_message({PARSER: PATCH_FAILURES[PARSER]}))
        else:
            guard_read_args(module, unsupported_version_reason)
        module.__attok_guarded__ = True
    except Exception as err:  # noqa: BLE001 - same rule; LF's own parser then rejects the unknown attok keys
        record_failure(f"{name}.read_args", err)


def patch_disabled(name: str, module) -> None:
    """ATTOK_DISABLE: leave LF as shipped, but say so when an AttTok folder is loaded. Never raises."""
    point = DISABLED_POINTS.get(name)
    if point is None or getattr(module, PATCHED_MARK, False):
        return
    install_excepthook()
    try:
        _apply_point(name, module, point)
    except Exception as err:  # noqa: BLE001 - LF must stay usable
        record_failure(name, err)


def patch_all() -> None:
    """Import and patch every LF module of :data:`POINTS` now (programmatic use; the hook does it on import)."""
    for name in POINTS:
        module = sys.modules.get(name) or importlib.import_module(name)
        patch_module(name, module)
