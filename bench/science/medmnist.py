"""What the CPU accuracy benchmarks share (BENCHMARKS.md §4): the MedMNIST class maps given to
`attok data classify`, and the AttTok components of the Fig. 3 arms."""

from __future__ import annotations

CLASS_MAPS = {  # name -> (MedMNIST folder under data/sources, class map YAML)
    "pneumonia": ("pneumoniamnist", "modality: xray\nclasses:\n  0: normal\n  1: pneumonia\n"),
    "breast": ("breastmnist", "modality: ultrasound\nclasses:\n  0: malignant\n  1: benign\n"),
    "retina": ("retinamnist", "modality: fundus\nclasses:\n  0: no DR\n  1: mild DR\n  2: moderate DR\n"
                              "  3: severe DR\n  4: proliferative DR\n"),
}
COMPONENTS = {  # Fig. 3: attribute tokens alone, + ACC (Eq. 6-7), + ACM (Eq. 8-9), both
    "tokens": {"attok_acc": False, "attok_acm": False},
    "+ACC": {"attok_acc": True, "attok_acm": False},
    "+ACM": {"attok_acc": False, "attok_acm": True},
    "+both": {"attok_acc": True, "attok_acm": True},
}
