"""GP expert SFT data: TFDS array_record builder (no TensorFlow), expert replies, determinism, reference JSON."""
import ast
import json
import re
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

import jax.numpy as jnp

from jaxrl_vlm import config as config_lib
from jaxrl_vlm.data.gp_expert import build_expert_dataset, expert_config, write_reference_json
from jaxrl_vlm.data.gp_expert.sft_source import expert_config_name
from jaxrl_vlm.envs.general_points.cards import card_atlas, render_hands
from jaxrl_vlm.envs.general_points.prompts import user_message
from jaxrl_vlm.envs.general_points.solver import solutions

NAMES = {1: "A", 11: "J", 12: "Q", 13: "K"}
N = 32


def _fraction_value(formula: str) -> Fraction:
    """Exact value of an arithmetic expression of integers and + - * / ( ), evaluated independently of the solver."""
    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp):
            a, b = value(node.left), value(node.right)
            ops = {ast.Add: a.__add__, ast.Sub: a.__sub__, ast.Mult: a.__mul__, ast.Div: a.__truediv__}
            return ops[type(node.op)](b)
        raise ValueError(f"unexpected node {ast.dump(node)} in {formula!r}")
    return value(ast.parse(formula, mode="eval"))


def _records(builder):
    source = builder.as_data_source()["train"]
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def lang_ood(data_dir):
    return _records(build_expert_dataset(data_dir, "l_face_as_11_12_13_mixed", N, 7))


@pytest.fixture(scope="module")
def vision(data_dir):
    return _records(build_expert_dataset(data_dir, "vl_face10_black", N, 3))


def _check_expert(records, *, face10, language_only, allowed_suits):
    assert len(records) == N
    for rec in records:
        ranks, suits, numbers = rec["ranks"], rec["suits"], rec["numbers"]
        assert ranks.dtype == np.int32 and ranks.shape == (4,) and ((1 <= ranks) & (ranks <= 13)).all()
        assert set(suits.tolist()) <= allowed_suits
        assert numbers.tolist() == [min(r, 10) if face10 else r for r in ranks.tolist()]
        assert bool(rec["face_cards_as_10"]) is face10
        prompt, response = rec["prompt"].decode(), rec["response"].decode()
        assert prompt == user_message(ranks, face_cards_as_10=face10, language_only=language_only)
        names = [NAMES.get(r, str(r)) for r in ranks.tolist()]
        match = re.fullmatch(r'\n\{\n  "cards": (\[.*\]),\n  "number": (\[.*\]),\n  "formula": "(.*)=24",\n\}',
                             response)
        assert match, response
        assert ast.literal_eval(match.group(1)) == names
        assert ast.literal_eval(match.group(2)) == numbers.tolist()
        formula = match.group(3)
        assert formula == rec["formula"].decode()
        assert formula in solutions(numbers.tolist())
        assert _fraction_value(formula) == 24
        assert Counter(int(t) for t in re.findall(r"\d+", formula)) == Counter(numbers.tolist())


def test_language_ood_records_are_expert_replies(lang_ood):
    _check_expert(lang_ood, face10=False, language_only=True, allowed_suits={0, 1, 2, 3})
    assert all((rec["ranks"] >= 11).any() for rec in lang_ood)  # OOD hands always hold a face card
    assert "image" not in lang_ood[0]


def test_vision_records_are_expert_replies_with_rendered_images(vision):
    _check_expert(vision, face10=True, language_only=False, allowed_suits={1, 3})
    ranks = np.stack([rec["ranks"] for rec in vision])
    suits = np.stack([rec["suits"] for rec in vision])
    expected = np.asarray(render_hands(jnp.asarray(ranks), jnp.asarray(suits), jnp.asarray(card_atlas())))
    for rec, image in zip(vision, expected):
        assert rec["image"].shape == (1200, 1200, 3) and rec["image"].dtype == np.uint8
        np.testing.assert_array_equal(rec["image"], image)


def test_same_seed_same_dataset_other_seed_differs(lang_ood, tmp_path):
    again = _records(build_expert_dataset(tmp_path, "l_face_as_11_12_13_mixed", N, 7))
    for a, b in zip(lang_ood, again):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = _records(build_expert_dataset(tmp_path, "l_face_as_11_12_13_mixed", N, 8))
    assert [r["prompt"] for r in other] != [r["prompt"] for r in lang_ood]


def test_resolution_config(tmp_path):
    records = _records(build_expert_dataset(tmp_path, "vl_face_as_11_12_13_red", 3, 1, resolution=64))
    for rec in records:
        assert set(rec["suits"].tolist()) <= {0, 2}
        image = render_hands(jnp.asarray(rec["ranks"][None]), jnp.asarray(rec["suits"][None]),
                             jnp.asarray(card_atlas()), resolution=64)
        np.testing.assert_array_equal(rec["image"], np.asarray(image)[0])


def test_config_names_record_settings_and_reject_bad_input():
    assert expert_config("vl_face10_black", 10, 2, resolution=560).name == "vl_face10_black-n10-seed2-res560"
    assert expert_config("l_face10_mixed", 10, 2).name == "l_face10_mixed-n10-seed2"
    with pytest.raises(ValueError, match="vl_face10_green"):
        expert_config("vl_face10_green", 10, 0)
    with pytest.raises(ValueError, match="num_examples"):
        expert_config("l_face10_mixed", 0, 0)


def test_sft_job_picks_the_dataset_of_its_task():
    """config.task's modality, face rule and suit set name the expert config the SFT job trains on."""
    task = config_lib.base_config("sft", "x").task
    assert expert_config_name(task) == "l_face10_mixed"
    task.language_only, task.face_cards_as_10, task.suits = False, False, "red"
    assert expert_config_name(task) == "vl_face_as_11_12_13_red"
    expert_config(expert_config_name(task), 1, 0)  # a config the builder has


def test_reference_json_export(vision, lang_ood, tmp_path):
    path = write_reference_json(vision[:3], tmp_path / "vl")
    with open(path) as f:
        records = json.load(f)
    assert len(records) == 3
    for rec, example in zip(records, vision):
        assert set(rec) == {"image", "conversations"}
        human, gpt = rec["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"] == "<image>\n" + example["prompt"].decode()
        assert gpt["value"] == example["response"].decode()
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "vl" / rec["image"])), example["image"])
    with open(write_reference_json(lang_ood[:2], tmp_path / "l")) as f:
        records = json.load(f)
    assert [set(r) for r in records] == [{"conversations"}] * 2
    assert records[1]["conversations"][0]["value"] == lang_ood[1]["prompt"].decode()
