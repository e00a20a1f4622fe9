"""Synthetic V-IRL cities: street grid, places, panorama points and routes in the real on-disk format."""
from jaxrl_vlm.envs.virl.city.layout import City, Pano, Place, StreetSigns, Walls, generate_city
from jaxrl_vlm.envs.virl.city.routes import make_route, make_routes, milestone_block, route_infos_json
from jaxrl_vlm.envs.virl.city.styles import DEFAULT_STYLE, STYLES, CityStyle, get_style

__all__ = ["City", "CityStyle", "DEFAULT_STYLE", "Pano", "Place", "STYLES", "StreetSigns", "Walls", "generate_city",
           "get_style", "make_route", "make_routes", "milestone_block", "route_infos_json"]
