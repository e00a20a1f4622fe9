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
    combos = [(first, second) for first in _FIRST for second in _SECOND if first != second]
    capacity = len(combos) * len(PLACE_KINDS)
    if count > capacity:
        raise ValueError(f"cannot generate {count} distinct place names (at most {capacity})")
    out = []
    for code in rng.choice(capacity, size=count, replace=False).tolist():
        (first, second), (word, types) = combos[code // len(PLACE_KINDS)], PLACE_KINDS[code % len(PLACE_KINDS)]
        out.append((f"{first} {second} {word}", types))
    return out
