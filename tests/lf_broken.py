"""Break the plugin's view of LLaMA-Factory, then run `llamafactory-cli train` twice in this one process (fail-safe
tests): a vanilla run, which must train exactly as LF does, and an AttTok attempt, which must stop with an error.

Usage: python lf_broken.py MODE VANILLA.yaml ATTOK.yaml
  raise-loader    the loader patcher raises (a patcher bug)
  drop-symbol     LF's parser module loses `_parse_train_mca_args` before the plugin patches it (an LF release
                  that renamed it; LF's own train path does not use it, so vanilla LF still works)
  fake-version    LF reports version 0.9.99 (untested): nothing private may be touched

Between the two runs it writes MARKER to stdout and stderr, then one line on stdout: MARKER plus a JSON object that
says what the plugin touched (``private``: LF's parser, loader and adapter as patched or not). The AttTok attempt's
error ends the process as it ends `llamafactory-cli` (traceback on stderr, exit status 1).
"""

import json
import sys

from llamafactory_attok import _boot, lf_patches

MARKER = "==== lf_broken: AttTok attempt ===="
FAKE_VERSION = "0.9.99"


class _DropSymbol:
    """A meta-path finder in front of the plugin's: runs LF's module body, then deletes one symbol."""

    def __init__(self, module: str, symbol: str) -> None:
        self.module, self.symbol, self.busy = module, symbol, False

    def find_spec(self, name, path, target=None):
        if name != self.module or self.busy:  # the plugin's finder asks the other finders, this one included
            return None
        plugin = next(f for f in sys.meta_path if isinstance(f, _boot._Finder))
        self.busy = True
        try:
            spec = plugin.find_spec(name, path, target)
        finally:
            self.busy = False
        inner, symbol = spec.loader._loader, self.symbol

        class Loader:
            def create_module(self, spec):
                return inner.create_module(spec)

            def exec_module(self, module):
                inner.exec_module(module)
                delattr(module, symbol)

        spec.loader._loader = Loader()
        return spec


def _touched() -> dict:
    import llamafactory.hparams.parser as parser
    import llamafactory.model.adapter as adapter
    import llamafactory.model.loader as loader
    import peft

    return {"parse_train_args_wrapped": hasattr(parser._parse_train_args, "__wrapped__"),
            "read_args_wrapped": hasattr(parser.read_args, "__wrapped__"),
            "loader_patched": hasattr(loader, "__attok_patched__"),
            "lora_config_is_peft": adapter.LoraConfig is peft.LoraConfig}


def _train(config: str) -> None:
    from llamafactory.cli import main as cli_main

    sys.argv = ["llamafactory-cli", "train", config]
    cli_main()


def main() -> None:
    mode, vanilla, attok = sys.argv[1:4]
    if mode == "raise-loader":
        def broken(module, *symbols):
            raise RuntimeError("simulated patcher bug")

        from llamafactory_attok.lf_patches import loader

        loader.patch = broken
    elif mode == "drop-symbol":
        sys.meta_path.insert(0, _DropSymbol(lf_patches.PARSER, "_parse_train_mca_args"))
    elif mode == "fake-version":
        import llamafactory.extras.env as env

        env.VERSION = FAKE_VERSION
    else:
        raise SystemExit(f"unknown mode {mode}")
    _train(vanilla)
    for stream in (sys.stdout, sys.stderr):
        print(MARKER, file=stream, flush=True)
    print(MARKER, json.dumps(_touched()), flush=True)
    _train(attok)


if __name__ == "__main__":
    main()
