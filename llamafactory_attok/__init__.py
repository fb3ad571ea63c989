"""llamafactory-attok: AttTok attribute tokens for vision-language models, as a LLaMA-Factory plugin.

Importing this package is cheap (stdlib only): the startup hook imports it in every Python process.
"""

__version__ = "0.1.0"


def apply() -> None:
    """Patch LLaMA-Factory now, for programmatic use (``run_exp(...)`` in your own script).

    The installed startup hook does the same automatically when LLaMA-Factory is imported.
    """
    from . import _boot, lf_patches

    _boot.install()
    lf_patches.patch_all()
