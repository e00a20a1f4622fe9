"""Generated names of places (shops, cafes, banks, ...) with Google-like place types."""
from __future__ import annotations

import numpy as np

PLACE_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Cafe", ("cafe", "food")),
    ("Coffee", ("cafe", "food")),
    ("Bakery", ("bakery", "food")),
    ("Bank", ("bank", "finance")),
    ("Pharmacy", ("pharmacy", "health")),
    ("Books", ("book_store", "store")),
    ("Florist", ("florist", "store")),
    ("Diner", ("restaurant", "food")),
    ("Bistro", ("restaurant", "food")),
    ("Pizza", ("restaurant", "food")),
    ("Hotel", ("lodging",)),
    ("Gallery", ("art_gallery",)),
    ("Market", ("grocery_or_supermarket", "store")),
    ("Optics", ("store",)),
    ("Shoes", ("shoe_store", "store")),
    ("Deli", ("meal_takeaway", "food")),
    ("Gym", ("gym", "health")),
    ("Bar", ("bar",)),
)

_FIRST = ("Golden", "Blue", "Red", "Silver", "Green", "Happy", "Little", "Grand", "Royal", "Urban", "Old", "Lucky",
          "Bright", "Quiet", "Corner", "Velvet", "Maple", "Harbor", "Sunny", "Crystal", "Copper", "Ivory", "North",
          "Twin", "Wild", "Amber", "Iron", "Lotus", "Coral", "Olive")
_SECOND = ("Fig", "Lark", "Pine", "Star", "Bridge", "Oak", "Finch", "Lantern", "River", "Crown", "Anchor", "Garden",
           "Moon", "Cedar", "Fox", "Bell", "Sparrow", "Willow", "Stone", "Harvest", "Orchid", "Comet", "Tiger",
           "Heron", "Maple", "Rose", "Wave", "Peak", "Arch", "Leaf")


def place_names(rng: np.random.Generator, count: int) -> list[tuple[str, tuple[str, ...]]]:
    """`count` distinct (name, place_types) pairs such as ("Golden Fig Cafe", ("cafe", "food"))."""
    capacity = len(_FIRST) * len(_SECOND) * len(PLACE_KINDS)
    if count > capacity:
        raise ValueError(f"cannot generate {count} distinct place names (at most {capacity})")
    codes = rng.choice(capacity, size=count, replace=False)
    out = []
    for code in codes.tolist():
        first, rest = divmod(code, len(_SECOND) * len(PLACE_KINDS))
        second, kind = divmod(rest, len(PLACE_KINDS))
        word, types = PLACE_KINDS[kind]
        if _FIRST[first] == _SECOND[second]:
            second = (second + 1) % len(_SECOND)
        out.append((f"{_FIRST[first]} {_SECOND[second]} {word}", types))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        return place_names(np.random.default_rng(rng.integers(1 << 31)), count)
    return out
