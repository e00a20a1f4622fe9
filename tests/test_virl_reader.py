"""V-IRL reader: milestone parsing, geodesy, relocation, instruction/rail edge cases, the city generator's output."""
import numpy as np
import pytest
from virl_routes import offset, straight_route, write_route_dir

from jaxrl_vlm.envs.virl.geo import geodesic_m, haversine_m
from jaxrl_vlm.envs.virl.rails import build_rail, relative_label, route_template
from jaxrl_vlm.envs.virl.reader import PanoMapping, load_route_set, parse_navigation_string

REAL_BLOCK = ('\n{\n"intersection_idx": "1",\n"landmarks": "Prince St is on your front",\n"distance": "16 meters",\n'
              '"human_heading": "0",\n"to_next_intersection_heading": "298 (northwest)",\n}\n')


def test_parse_navigation_string():
    blocks = parse_navigation_string(REAL_BLOCK * 2 + "\n{\n}\n")
    assert blocks == [{"intersection_idx": "1", "landmarks": "Prince St is on your front", "distance": "16 meters",
                       "human_heading": "0", "to_next_intersection_heading": "298 (northwest)"}] * 2
    assert parse_navigation_string("{'a': 'x: y',\nno colon here\n  \"b\":3,,}{}") == [{"a": "x: y", "b": "3"}]


def test_vincenty_matches_published_geodesic():
    # Flinders Peak -> Buninyong, Vincenty (1975) / Geoscience Australia: 54972.271 m on the ellipsoid.
    dms = lambda d, m, s: np.sign(d) * (abs(d) + m / 60 + s / 3600)  # noqa: E731
    flinders = (dms(-37, 57, 3.72030), dms(144, 25, 29.52440))
    buninyong = (dms(-37, 39, 10.15610), dms(143, 55, 35.38390))
    assert geodesic_m(flinders, buninyong) == pytest.approx(54972.271, abs=0.002)
    assert geodesic_m(flinders, flinders) == 0.0
    p = (40.725, -73.999)
    for metres, bearing in [(5.0, 10), (8.0, 200), (16.0, 298)]:  # street scale: sphere vs ellipsoid within 0.5%
        assert geodesic_m(p, offset(p, metres, bearing)) == pytest.approx(metres, rel=5e-3)


def test_relocation_exact_nearest_and_radius():
    p = (40.73, -73.99)
    mapping = PanoMapping({p: "a", offset(p, 50, 90): "b"})
    assert mapping.relocate(p) == 0
    near, far = offset(p, 19.5, 0), offset(p, 20.5, 0)
    assert haversine_m(np.array(p), np.array(near)) < 20 < haversine_m(np.array(p), np.array(far))
    assert mapping.relocate(near) == 0 and mapping.relocate(far) is None
    assert mapping.relocate(offset(p, 40, 90)) == 1


def test_relative_label_has_no_wraparound():
    assert [relative_label(d) for d in (-340, -46, -45, 0, 1, 45, 46)] == [
        "left", "left", "slightly left", "slightly left", "slightly right", "slightly right", "right"]


def test_short_leg_and_single_milestone(tmp_path):
    # Leg 1 is 4 m long (<= 5 m): no candidates and the sentence index does not advance, so sentences shift.
    r0, m0 = straight_route("s", (40.75, -73.97), [(90, 100), (0, 4), (180, 60)],
                            ["A is on your left", "B is on your right", "The destination C is on your front"],
                            init_heading=100)
    r1, m1 = straight_route("k", (40.76, -73.96), [(270, 60)], ["The destination D is on your left"],
                            init_heading=300)
    rs = load_route_set(write_route_dir(tmp_path, [r0, r1], {**m0, **m1}))
    t0, t1 = route_template(rs, rs.routes[0]), route_template(rs, rs.routes[1])
    rail = build_rail(t0, 0, np.ones((t0.num_legs, 5)))
    keys = [p for p in rail if p.gt_action != "forward()"]
    assert [p.instruction_idx for p in keys] == [1, 3, 4, 5]
    assert keys[2].instruction == "Move forward until you reach next intersection where B is on your right."
    assert t1.sentences(0) == ["Turn slightly left to face west.",
                               "Move forward until you reach destination where The destination D is on your left."]


def test_generated_city_routes_build(tmp_path):
    from jaxrl_vlm.envs.virl.host_env import HostNavigationEnv
    from jaxrl_vlm.envs.virl.make_city import write_city

    write_city(str(tmp_path), seed=0, n_routes=3, styles=["soho"], pano_width=32, grid=(3, 3))
    rs = load_route_set(tmp_path)
    templates = [route_template(rs, r) for r in rs.routes]
    env = HostNavigationEnv(templates)
    rng = np.random.default_rng(0)
    for route, t in enumerate(templates):
        env.reset(route, int(rng.integers(360)), rng.random((t.num_legs, 5)))
        terminated = False
        while not terminated:
            reward, terminated, truncated, info = env.step(f'"action": "{env.point.gt_action}"')
            assert reward == 1.0 and not truncated
        assert info["is_success"]
