"""The derived rule as JavaScript (router.rule_text.to_javascript) answers as the rule does, run by node."""

import json
import shutil
import subprocess

import pytest

from convroute.router.derive import derive_rule
from convroute.router.rule_text import to_javascript
from test_derive_rule import fleet, full_grid, suite_shapes

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_javascript_routes_like_the_rule(tmp_path):
    rule, _ = derive_rule(fleet())
    (tmp_path / "rule.mjs").write_text(to_javascript(rule))
    shapes = full_grid() + suite_shapes()
    records = [dict(n=p.n, c_in=p.c_in, c_out=p.c_out, ho=p.ho, wo=p.wo, kh=p.kh, kw=p.kw, groups=p.groups,
                    dilation=list(p.dilation), transposed=p.transposed) for p in shapes]
    (tmp_path / "shapes.json").write_text(json.dumps(records))
    script = """import {derivedPreference, shouldUseConv2dIm2col} from "./rule.mjs";
import {readFileSync} from "node:fs";
const shapes = JSON.parse(readFileSync("shapes.json"));
const out = [];
for (const family of ["mali", "adreno", "nvidia"])
  for (const p of shapes) out.push([derivedPreference(p, family), shouldUseConv2dIm2col(p, family)]);
console.log(JSON.stringify(out));"""
    (tmp_path / "run.mjs").write_text(script)
    found = json.loads(subprocess.run([NODE, "run.mjs"], cwd=tmp_path, capture_output=True, text=True,
                                      check=True).stdout)
    want = [[list(rule.preferred(p, family)[0]), rule.use_im2col(p, family)[0]]
            for family in ("mali", "adreno", "nvidia") for p in shapes]
    assert found == want
    assert len({tuple(f[0]) for f in found}) > 1 and len({f[1] for f in found}) == 2
