"""Everything that differs between the transformers releases AttTok supports (5.5.0 to 5.8.0), in one place.

Each entry says when it can be removed. Private transformers symbols used elsewhere are listed in
``lf_patches.PRIVATE_CALLS`` and resolved by tests on every tested stack.
"""

from __future__ import annotations


def without_prefix_changes(conversions: list) -> list:
    """``conversions`` without ``PrefixChange`` entries, as ``core_model_loading.revert_weight_conversion`` drops
    them for a model built without ``from_pretrained``.

    ``PrefixChange`` exists from transformers 5.6.0 (5.5.x has no such class and drops nothing).
    Remove this shim when the minimum supported transformers is 5.6 or newer.
    """
    try:
        from transformers.core_model_loading import PrefixChange
    except ImportError:  # transformers 5.5.x
        return list(conversions)
    return [c for c in conversions if not isinstance(c, PrefixChange)]
