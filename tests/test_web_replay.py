"""Browser bundles replayed natively (frontend/web/replay.py) on this machine's adapter: the float16 plan, which
no browser here can run (SwiftShader has no shader-f16), and the software adapters' plan, against torch."""

import numpy as np
import pytest
import torch

from convroute.device.gpu import get_gpu
from convroute.frontend.web import export_web
from convroute.frontend.web.replay import candidate_routes, replay
from convroute.measure.reference import max_relative_error


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(11)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU6(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 24, 1), torch.nn.ConvTranspose2d(24, 8, 4, stride=2, padding=1),
        torch.nn.Hardswish()).eval()
    x = torch.randn(1, 3, 16, 16)
    out = tmp_path_factory.mktemp("replay")
    manifest = export_web(model, (x,), out, candidates="all", weights_budget=None)
    return out, manifest, x, model(x).detach()


@pytest.mark.parametrize("plan, tolerance", [("float16", 1e-2), ("cpu-float32", 1e-4), ("float32", 1e-4)])
def test_each_plan_matches_torch(bundle, plan, tolerance):
    out, manifest, x, want = bundle
    if plan == "float16" and "shader-f16" not in get_gpu().device.features:
        pytest.skip("this adapter has no shader-f16")
    got = replay(out, x.numpy(), plan=plan)
    assert got.dtype == np.float32 and got.shape == tuple(want.shape)
    assert max_relative_error(torch.from_numpy(got), want) < tolerance, plan


@pytest.mark.parametrize("plan, tolerance", [("float16", 1e-2), ("cpu-float32", 1e-4), ("float32", 1e-4)])
def test_every_candidate_of_each_plan_matches_torch(bundle, plan, tolerance):
    out, manifest, x, want = bundle
    if plan == "float16" and "shader-f16" not in get_gpu().device.features:
        pytest.skip("this adapter has no shader-f16")
    routes = candidate_routes(out, plan)
    assert len(routes) >= 3
    for route in routes:
        got = replay(out, x.numpy(), plan=plan, route=route)
        assert max_relative_error(torch.from_numpy(got), want) < tolerance, route


def test_bad_requests_are_clear_errors(bundle):
    out, _, x, _ = bundle
    with pytest.raises(ValueError, match="has no plan 'bfloat16'"):
        replay(out, x.numpy(), plan="bfloat16")
    with pytest.raises(ValueError, match="takes input of shape"):
        replay(out, np.zeros((1, 3, 8, 8), np.float32), plan="float32")
