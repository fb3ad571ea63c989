"""Run `llamafactory-cli` in this process after breaking the plugin's view of LLaMA-Factory (fail-safe tests).

Usage: python lf_broken.py MODE CONFIG.yaml
  raise-loader    the loader patcher raises (a patcher bug)
  drop-symbol     LF's parser module loses `_parse_train_mca_args` before the plugin patches it (an LF release
                  that renamed it; LF's own train path does not use it, so vanilla LF still works)
  fake-version    LF reports version 0.9.6: nothing private may be touched
"""

import sys

from llamafactory_attok import _boot, lf_patches


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


def main() -> None:
    mode, config = sys.argv[1], sys.argv[2]
    if mode == "raise-loader":
        def broken(module, *symbols):
            raise RuntimeError("simulated patcher bug")

        from llamafactory_attok.lf_patches import loader

        loader.patch = broken
    elif mode == "drop-symbol":
        sys.meta_path.insert(0, _DropSymbol(lf_patches.PARSER, "_parse_train_mca_args"))
    elif mode == "fake-version":
        import llamafactory.extras.env as env

        env.VERSION = "0.9.6"
    else:
        raise SystemExit(f"unknown mode {mode}")
    from llamafactory.cli import main as cli_main

    sys.argv = ["llamafactory-cli", "train", config]
    cli_main()


if __name__ == "__main__":
    main()
