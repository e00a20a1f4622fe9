"""Geodesy helpers for synthetic cities: local metric frame <-> lat/lng, bearings, compass and relative words.

The local frame is east-north metres (x = east, y = north) around an origin (lat0, lng0). Cities span about a
kilometre, so the per-degree scale factors of the WGS-84 ellipsoid at the origin are accurate to centimetres.
"""
from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6371000.0
COMPASS_8 = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")
RELATIVE_8 = ("front", "right front", "right", "right behind", "behind", "left behind", "left", "left front")


def metres_per_degree(lat0: float) -> tuple[float, float]:
    """(metres per degree of latitude, metres per degree of longitude) on WGS-84 at latitude `lat0` (degrees)."""
    phi = math.radians(lat0)
    m_lat = 111132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi) - 0.0023 * math.cos(6 * phi)
    m_lng = 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi) + 0.118 * math.cos(5 * phi)
    return m_lat, m_lng


def enu_to_latlng(xy: np.ndarray, origin: tuple[float, float], decimals: int = 7) -> np.ndarray:
    """Local east/north metres float[..., 2] -> (lat, lng) degrees float64[..., 2], rounded to `decimals`."""
    m_lat, m_lng = metres_per_degree(origin[0])
    xy = np.asarray(xy, np.float64)
    lat = origin[0] + xy[..., 1] / m_lat
    lng = origin[1] + xy[..., 0] / m_lng
    return np.round(np.stack([lat, lng], axis=-1), decimals)


def latlng_to_enu(latlng: np.ndarray, origin: tuple[float, float]) -> np.ndarray:
    """(lat, lng) degrees float[..., 2] -> local east/north metres float64[..., 2]."""
    m_lat, m_lng = metres_per_degree(origin[0])
    latlng = np.asarray(latlng, np.float64)
    return np.stack([(latlng[..., 1] - origin[1]) * m_lng, (latlng[..., 0] - origin[0]) * m_lat], axis=-1)


def initial_bearing(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle initial bearing in degrees [0, 360) from geocode a=(lat, lng) to geocode b."""
    lat1, lat2 = math.radians(a[0]), math.radians(b[0])
    dlng = math.radians(b[1] - a[1])
    y = math.sin(dlng) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(dlng)
    return math.degrees(math.atan2(y, x)) % 360.0


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance in metres (R = 6371 km) between geocodes a and b given as (lat, lng) degrees."""
    lat1, lat2 = math.radians(a[0]), math.radians(b[0])
    dlat, dlng = lat2 - lat1, math.radians(b[1] - a[1])
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlng / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def compass_word(bearing: float) -> str:
    """8-way compass name of a bearing in degrees: north covers [337.5, 22.5), northeast [22.5, 67.5), ..."""
    return COMPASS_8[int(((bearing % 360.0) + 22.5) // 45.0) % 8]


def relative_word(relative_bearing: float) -> str:
    """8-way relation word of a bearing relative to the facing direction: front covers [-22.5, 22.5), ..."""
    return RELATIVE_8[int(((relative_bearing % 360.0) + 22.5) // 45.0) % 8]
