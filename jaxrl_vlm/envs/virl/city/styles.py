"""Visual and layout styles of the synthetic cities (one per region, for the visual-OOD split)."""
from __future__ import annotations

import dataclasses

RGB = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class CityStyle:
    """Everything that makes one synthetic city look and feel different from another.

    Lengths are metres, colours are RGB uint8 triples, angles are degrees.
    """

    name: str
    origin: tuple[float, float]          # (lat, lng) of the grid centre
    grid_rotation: float                 # bearing of the "avenue" axis
    block_size: tuple[float, float]      # (along avenues, along streets) spacing of intersections
    road_width: float
    sidewalk_width: float
    floors: tuple[int, int]              # inclusive range of floors per building
    floor_height: float
    facade_palette: tuple[RGB, ...]
    trim_colour: RGB
    window_colour: RGB
    window_size: tuple[float, float]     # (width, height) of one window
    window_spacing: float                # horizontal distance between window centres
    storefront_colour: RGB
    sky_zenith: RGB
    sky_horizon: RGB
    cloud_amount: float                  # 0 = clear, 1 = overcast
    road_colour: RGB
    sidewalk_colour: RGB
    lane_colour: RGB
    sign_backgrounds: tuple[RGB, ...]
    sign_text: tuple[RGB, ...]
    street_sign: tuple[RGB, RGB]         # (board, text) colours of the street-name blades at intersections
    avenue_names: tuple[str, ...]
    street_names: tuple[str, ...]


STYLES: dict[str, CityStyle] = {
    "soho": CityStyle(
        name="soho", origin=(40.72460, -73.99970), grid_rotation=29.0, block_size=(90.0, 70.0),
        road_width=11.0, sidewalk_width=4.0, floors=(4, 7), floor_height=3.6,
        facade_palette=((140, 62, 48), (120, 54, 42), (164, 84, 60), (205, 196, 176), (98, 92, 88), (150, 100, 70)),
        trim_colour=(225, 220, 205), window_colour=(46, 58, 70), window_size=(1.3, 2.0), window_spacing=2.6,
        storefront_colour=(40, 36, 34), sky_zenith=(70, 125, 205), sky_horizon=(185, 210, 235), cloud_amount=0.25,
        road_colour=(72, 72, 76), sidewalk_colour=(160, 156, 150), lane_colour=(230, 200, 60),
        sign_backgrounds=((200, 20, 30), (10, 10, 10), (250, 250, 245), (20, 60, 160)),
        sign_text=((255, 255, 255), (255, 215, 0), (15, 15, 15), (255, 255, 255)),
        street_sign=((0, 112, 60), (255, 255, 255)),
        avenue_names=("Mercer St", "Greene St", "Wooster St", "Crosby St", "Lafayette St", "Elm Pl", "Hudson St",
                      "Varick St", "Thompson St", "Sullivan St"),
        street_names=("Prince St", "Spring St", "Broome St", "Grand St", "Howard St", "Houston St", "Bleecker St",
                      "Bond St", "Great Jones St", "Kenmare St"),
    ),
    "milan": CityStyle(
        name="milan", origin=(45.46420, 9.19000), grid_rotation=-12.0, block_size=(75.0, 60.0),
        road_width=9.0, sidewalk_width=3.0, floors=(4, 6), floor_height=3.8,
        facade_palette=((214, 164, 92), (196, 120, 72), (232, 204, 150), (180, 96, 64), (222, 186, 120)),
        trim_colour=(245, 236, 214), window_colour=(70, 54, 40), window_size=(1.2, 2.3), window_spacing=3.2,
        storefront_colour=(60, 48, 36), sky_zenith=(60, 140, 220), sky_horizon=(200, 225, 245), cloud_amount=0.1,
        road_colour=(96, 90, 84), sidewalk_colour=(190, 176, 160), lane_colour=(245, 245, 240),
        sign_backgrounds=((0, 90, 60), (120, 20, 40), (240, 235, 220)),
        sign_text=((250, 240, 200), (255, 255, 255), (40, 20, 10)),
        street_sign=((250, 250, 250), (20, 40, 120)),
        avenue_names=("Via Torino", "Corso Genova", "Via Dante", "Via Manzoni", "Corso Magenta", "Via Brera",
                      "Via Solferino", "Corso Como", "Via Tortona", "Via Moscova"),
        street_names=("Via Larga", "Via Orefici", "Via Spiga", "Via Durini", "Via Borgonuovo", "Via Fiori Chiari",
                      "Via Vigevano", "Via Savona", "Via Lanzone", "Via Meravigli"),
    ),
    "lagos": CityStyle(
        name="lagos", origin=(6.45410, 3.39470), grid_rotation=8.0, block_size=(70.0, 55.0),
        road_width=10.0, sidewalk_width=2.5, floors=(2, 4), floor_height=3.3,
        facade_palette=((236, 232, 214), (150, 200, 190), (240, 200, 120), (210, 160, 170), (190, 210, 140)),
        trim_colour=(120, 110, 100), window_colour=(60, 80, 70), window_size=(1.4, 1.5), window_spacing=3.0,
        storefront_colour=(90, 70, 50), sky_zenith=(150, 180, 210), sky_horizon=(225, 220, 205), cloud_amount=0.5,
        road_colour=(110, 100, 92), sidewalk_colour=(170, 140, 110), lane_colour=(250, 250, 250),
        sign_backgrounds=((250, 210, 0), (0, 110, 200), (230, 90, 20)),
        sign_text=((20, 20, 20), (255, 255, 255), (255, 255, 255)),
        street_sign=((0, 90, 170), (255, 255, 255)),
        avenue_names=("Broad St", "Marina Rd", "Campbell St", "Martins St", "Balogun St", "Idumagbo Ave",
                      "Nnamdi Azikiwe St", "Tinubu Sq", "Ereko St", "Docemo St"),
        street_names=("Alli Balogun St", "Apongbon St", "Ojo Giwa St", "Odunlami St", "Kakawa St", "Issa Williams St",
                      "Bamgbose St", "Igbosere Rd", "Offin Rd", "Elegbata St"),
    ),
    "hongkong": CityStyle(
        name="hongkong", origin=(22.28190, 114.15820), grid_rotation=-20.0, block_size=(60.0, 45.0),
        road_width=9.0, sidewalk_width=2.5, floors=(9, 18), floor_height=3.1,
        facade_palette=((150, 155, 160), (175, 170, 160), (120, 130, 140), (200, 200, 195), (140, 120, 110)),
        trim_colour=(90, 95, 100), window_colour=(30, 50, 60), window_size=(1.6, 1.4), window_spacing=2.2,
        storefront_colour=(30, 30, 34), sky_zenith=(110, 140, 175), sky_horizon=(200, 205, 210), cloud_amount=0.6,
        road_colour=(62, 64, 68), sidewalk_colour=(140, 140, 135), lane_colour=(250, 220, 40),
        sign_backgrounds=((220, 0, 40), (255, 0, 160), (0, 160, 90), (255, 200, 0)),
        sign_text=((255, 255, 255), (255, 255, 255), (255, 255, 255), (140, 0, 0)),
        street_sign=((250, 250, 250), (200, 0, 0)),
        avenue_names=("Queen's Rd C", "Des Voeux Rd C", "Wellington St", "Stanley St", "Hollywood Rd",
                      "Lyndhurst Tce", "Gage St", "Cochrane St", "Jubilee St", "Peel St"),
        street_names=("Pottinger St", "Wing Kut St", "Gilman St", "Aberdeen St", "Graham St", "Li Yuen St E",
                      "Ice House St", "Duddell St", "Wyndham St", "Pedder St"),
    ),
    "london": CityStyle(
        name="london", origin=(51.51450, -0.13000), grid_rotation=3.0, block_size=(80.0, 60.0),
        road_width=9.5, sidewalk_width=3.5, floors=(3, 5), floor_height=3.7,
        facade_palette=((206, 184, 140), (236, 232, 220), (170, 80, 60), (190, 170, 130), (220, 214, 200)),
        trim_colour=(250, 250, 245), window_colour=(34, 40, 44), window_size=(1.1, 2.1), window_spacing=2.8,
        storefront_colour=(20, 40, 60), sky_zenith=(150, 158, 170), sky_horizon=(210, 212, 215), cloud_amount=0.9,
        road_colour=(58, 58, 62), sidewalk_colour=(175, 175, 170), lane_colour=(240, 240, 240),
        sign_backgrounds=((10, 30, 80), (20, 70, 40), (110, 10, 30)),
        sign_text=((230, 190, 80), (240, 230, 200), (255, 255, 255)),
        street_sign=((245, 245, 240), (15, 15, 15)),
        avenue_names=("Dean St", "Frith St", "Greek St", "Wardour St", "Poland St", "Berwick St", "Carnaby St",
                      "Old Compton St", "Charing Cross Rd", "Rupert St"),
        street_names=("Bateman St", "Romilly St", "Meard St", "Broadwick St", "Brewer St", "Lexington St",
                      "Beak St", "Great Marlborough St", "Noel St", "D'Arblay St"),
    ),
}

DEFAULT_STYLE = "soho"


def get_style(name: str) -> CityStyle:
    """The style called `name`; raises ValueError listing the known styles otherwise."""
    if name not in STYLES:
        raise ValueError(f"unknown city style {name!r}; known styles: {sorted(STYLES)}")
    return STYLES[name]
