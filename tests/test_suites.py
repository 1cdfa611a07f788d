"""Layer suites: the shipped files load, match the architectures they come from, and bad user files are
rejected with a message naming the layer and the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from convroute.bench.suites import SUITES, load_suite
from convroute.params import ConvParams

ROOT = Path(__file__).resolve().parent.parent
TOTALS = {"resnet18": 20, "resnet50": 53, "mobilenet_v2": 52, "vgg16": 13, "unet": 18}


@pytest.mark.parametrize("name", SUITES)
def test_shipped_suite_loads(name):
    suite = load_suite(name)
    assert suite.name == name and suite.source
    assert suite.total_count == TOTALS[name]
    shapes = [layer.params(1) for layer in suite.layers]
    assert len(set(shapes)) == len(shapes), "layers must be distinct"
    for layer in suite.layers:
        p = layer.params(3)
        assert isinstance(p, ConvParams) and layer.conv.n == 1 and p == layer.conv.with_batch(3)


def test_suite_contents():
    resnet = {layer.name: layer for layer in load_suite("resnet50").layers}
    conv1 = resnet["conv1"].conv
    assert (conv1.kh, conv1.kw, conv1.stride, conv1.h, conv1.c_out) == (7, 7, (2, 2), 224, 64)
    assert resnet["layer1.0.conv2"].count == 3
    mobilenet = load_suite("mobilenet_v2").layers
    assert sum(layer.params().is_depthwise for layer in mobilenet) >= 8
    unet = load_suite("unet").layers
    ups = [layer for layer in unet if layer.conv.transposed]
    assert len(ups) == 3 and all((u.conv.kh, u.conv.kw, u.conv.stride) == (2, 2, (2, 2)) for u in ups)
    assert [u.params().output_shape[2] for u in ups] == [56, 112, 224]


def test_shipped_files_match_the_architectures():
    """tools/make_suites.py regenerates exactly the shipped JSON from torchvision (no weights). In a fresh
    process: torchvision imports triton, whose LLVM crashes a process that has loaded lavapipe's."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "make_suites.py"), "--check"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stale" not in result.stdout


def test_user_file_with_defaults(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"layers": [{"c_in": 8, "h": 9, "w": 7, "c_out": 4, "kernel": [3, 1]}]}))
    suite = load_suite(path)
    layer = suite.layers[0]
    assert suite.name == "mine" and layer.name == "layer0" and layer.count == 1
    assert layer.params(2).output_shape == (2, 4, 7, 7)
    assert load_suite(str(path)) == suite


GOOD = {"name": "l", "c_in": 8, "h": 9, "w": 9, "c_out": 8, "kernel": 3}


@pytest.mark.parametrize(("content", "words"), [
    ("{not json", "not valid JSON"),
    ([], "top level must be a JSON object"),
    ({"layers": []}, "'layers' must be a non-empty list"),
    ({"layer": [GOOD]}, "'layers' must be a non-empty list"),
    ({"layers": [GOOD], "name": 3}, "'name' and 'source' must be strings"),
    ({"layers": [7]}, "layer 0 must be a JSON object"),
    ({"layers": [GOOD, {k: v for k, v in GOOD.items() if k != "h"}]}, "layer 1 (l): missing key(s) h"),
    ({"layers": [GOOD | {"c_in": "8"}]}, "layer 0 (l): 'c_in' must be an integer, got '8'"),
    ({"layers": [GOOD | {"c_out": 8.0}]}, "'c_out' must be an integer"),
    ({"layers": [GOOD | {"kernel": [3, 3, 3]}]}, "'kernel' must be an integer or a list of two"),
    ({"layers": [GOOD | {"stride": [1, True]}]}, "'stride' must be an integer"),
    ({"layers": [GOOD | {"transposed": "yes"}]}, "'transposed' must be true or false"),
    ({"layers": [GOOD | {"count": 0}]}, "'count' must be >= 1"),
    ({"layers": [GOOD | {"strides": 2}]}, "unknown key(s) strides"),
    ({"layers": [GOOD | {"groups": 3}]}, "layer 0 (l): groups=3 does not divide c_out=8"),
    ({"layers": [GOOD | {"groups": 2, "c_in": 9}]}, "does not divide the 9 input channels"),
    ({"layers": [GOOD | {"kernel": 11}]}, "layer 0 (l): empty output"),
    ({"layers": [GOOD | {"padding": -1}]}, "padding must be non-negative"),
    ({"layers": [GOOD | {"output_padding": 1}]}, "output_padding is only valid for a transposed"),
])
def test_bad_user_file(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError) as info:
        load_suite(path)
    assert words in str(info.value) and str(path) in str(info.value), str(info.value)


def test_unknown_suite_name():
    with pytest.raises(ValueError, match="'resnet51' is neither a shipped suite"):
        load_suite("resnet51")
