"""The one-line note at the end of an AttTok training run: did ACM (Eq. 9) learn, or stay at chance?

With K attribute books of equal size and no alignment, every entry is equally similar to an anchor and Eq. 9 is
−log(3 / 3K) = ln K. A total loss that falls while ``loss_acm`` stays at ln K falls only through NTP and through
λ decaying to 0; this note says so in words, beside the ``loss_ntp`` / ``loss_acm`` curves.
"""

from __future__ import annotations

import math

AT_CHANCE = 0.95  # loss_acm above this share of ln K counts as "at chance"


def acm_chance_note(history: list[dict], num_attributes: int) -> str | None:
    """The note for a run's ``log_history`` (None when no step logged ``loss_acm``): the mean of the last quarter of
    the logged ``loss_acm`` values against ln K."""
    values = [float(entry["loss_acm"]) for entry in history if "loss_acm" in entry]
    if not values:
        return None
    tail = values[-max(1, len(values) // 4):]
    final = sum(tail) / len(tail)
    where = f"loss_acm ended at {final:.3f} (mean of the last {len(tail)} logged step(s))"
    if num_attributes < 2:
        return f"AttTok: {where}; with K = 1 attribute book ACM has no negatives (Eq. 9 is 0), so it cannot learn."
    chance = math.log(num_attributes)
    if final >= AT_CHANCE * chance:
        return (f"AttTok: {where}, chance is ln K = ln {num_attributes} = {chance:.3f}: ACM stayed at chance — the "
                "hidden states that predict attribute tokens did not align with their books (Eq. 9). A falling total "
                "loss came from NTP and from λ decaying to 0 (loss_ntp is logged and plotted apart).")
    return (f"AttTok: {where}, below chance ln K = ln {num_attributes} = {chance:.3f} "
            f"({final / chance:.0%} of it): ACM aligned the attribute hidden states with their books (Eq. 9).")
