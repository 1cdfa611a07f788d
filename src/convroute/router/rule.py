"""A derived routing rule: two small decision trees over the features ET-VK's rules use, fitted by
`convroute derive-rule` (router/derive.py), kept as JSON and routed by the `derived` policy.

- `chooser`: the full method chooser. Its leaf names one or two algorithms for a (non-transposed) conv, tried
  in order ("winograd4,implicit_gemm": winograd4 where it can run, else implicit_gemm); where none can run the
  conv or all are excluded on the device, the conv routes as `seed`.
- `im2col`: ET-VK's `should_use_conv2d_im2col` relearned: below ET-VK's guards (groups 1, dilation 1,
  Kh*Kw > 1) it says im2col or direct; every other conv keeps seed's method.

A split tests `feature >= threshold` (numeric) or `family == value`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.params import ConvParams
from convroute.router.exclusions import avoid_blocked
from convroute.router.seed import im2col_candidate, method_route, seed_route

FORMAT, VERSION = "convroute-rule", 1
NUMERIC = ("groups", "dilation", "kernel_area", "c_in", "c_out", "out_pixels", "gather")
FEATURES = NUMERIC + ("family",)


def features(p: ConvParams, family: str) -> dict:
    """groups, dilation (the larger of the two), kernel area, C_in, C_out, H_out*W_out, the im2col gather
    N*K (N = batch*H_out*W_out rows, K = C_in/groups*Kh*Kw) and the device family."""
    kernel_area = p.kh * p.kw
    return {"groups": p.groups, "dilation": max(p.dilation), "kernel_area": kernel_area, "c_in": p.c_in,
            "c_out": p.c_out, "out_pixels": p.ho * p.wo,
            "gather": p.n * p.ho * p.wo * (p.c_in // p.groups) * kernel_area, "family": family}


@dataclass(frozen=True)
class Node:
    leaf: str | None = None
    feature: str = ""
    threshold: int | str = 0
    yes: Node | None = None
    no: Node | None = None

    def holds(self, f: dict) -> bool:
        return f[self.feature] == self.threshold if self.feature == "family" else f[self.feature] >= self.threshold

    def condition(self, yes: bool = True) -> str:
        if self.feature == "family":
            return f"family {'==' if yes else '!='} {self.threshold!r}"
        return f"{self.feature} {'>=' if yes else '<'} {self.threshold}"

    def decide(self, f: dict) -> tuple[str, list[str]]:
        """(leaf, the conditions on its path)."""
        node, path = self, []
        while node.leaf is None:
            taken = node.holds(f)
            path.append(node.condition(taken))
            node = node.yes if taken else node.no
        return node.leaf, path

    @property
    def conditions(self) -> int:
        return 0 if self.leaf is not None else 1 + self.yes.conditions + self.no.conditions

    @property
    def depth(self) -> int:
        return 0 if self.leaf is not None else 1 + max(self.yes.depth, self.no.depth)

    def leaves(self) -> set[str]:
        return {self.leaf} if self.leaf is not None else self.yes.leaves() | self.no.leaves()

    def to_json(self) -> dict:
        if self.leaf is not None:
            return {"leaf": self.leaf}
        return {"feature": self.feature, "threshold": self.threshold, "yes": self.yes.to_json(),
                "no": self.no.to_json()}

    @classmethod
    def from_json(cls, data: dict, leaves) -> Node:
        if "leaf" in data:
            if not isinstance(data["leaf"], str) or not all(n in leaves for n in data["leaf"].split(",")):
                raise ValueError(f"unknown leaf {data['leaf']!r}")
            return cls(leaf=data["leaf"])
        feature, threshold = data["feature"], data["threshold"]
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}")
        if (feature == "family") != isinstance(threshold, str) or isinstance(threshold, bool):
            raise ValueError(f"bad threshold {threshold!r} for {feature}")
        return cls(None, feature, threshold, cls.from_json(data["yes"], leaves), cls.from_json(data["no"], leaves))


def path_text(path: list[str]) -> str:
    return ", ".join(path) if path else "no condition"


@dataclass
class Rule:
    chooser: Node
    im2col: Node
    info: dict = field(default_factory=dict)  # what it was fitted on, how, and its in-sample regrets

    def preferred(self, p: ConvParams, family: str) -> tuple[tuple[str, ...], list[str]]:
        """The chooser's algorithms for p, in order, and the path to them (transposed convs: transposed)."""
        if p.transposed:
            return ("transposed",), ["transposed"]
        leaf, path = self.chooser.decide(features(p, family))
        return tuple(leaf.split(",")), path

    def use_im2col(self, p: ConvParams, family: str) -> tuple[bool, list[str]]:
        """The relearned should_use_conv2d_im2col: False outside ET-VK's guards."""
        if not im2col_candidate(p):
            return False, []
        leaf, path = self.im2col.decide(features(p, family))
        return leaf == "im2col", path

    def route(self, p: ConvParams, device: DeviceProfile, blocked: dict[str, str]) -> tuple[str, str]:
        """The `derived` policy: the first of the chooser's algorithms that can run p and is allowed, else seed's
        route."""
        if p.transposed:
            return avoid_blocked(p, *seed_route(p, device), blocked)
        algorithms, path = self.preferred(p, device.family)
        reason = f"derived rule: {path_text(path)} -> {' else '.join(algorithms)}"
        for algorithm in algorithms:
            why = ALGORITHMS[algorithm].unsupported(p)
            if why is None and algorithm not in blocked:
                return algorithm, reason + (f" -> {algorithm}" if algorithm != algorithms[0] else "")
            reason += f"; {algorithm} cannot run it ({why})" if why else \
                f"; {algorithm} is excluded on this device ({blocked[algorithm]})"
        seed_algorithm, seed_reason = avoid_blocked(p, *seed_route(p, device), blocked)
        return seed_algorithm, f"{reason} -> seed: {seed_reason}"

    def im2col_route(self, p: ConvParams, device: DeviceProfile, blocked: dict[str, str]) -> tuple[str, str]:
        """Seed with the relearned im2col decision (ET-VK's method set, the derived heuristic)."""
        routed = method_route(p)
        if routed:
            return avoid_blocked(p, *routed, blocked)
        use, path = self.use_im2col(p, device.family)
        algorithm = "im2col" if use else "direct"
        return avoid_blocked(p, algorithm, f"derived im2col rule: {path_text(path)} -> {algorithm}", blocked)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "chooser": self.chooser.to_json(),
                "im2col": self.im2col.to_json(), "info": self.info}

    @classmethod
    def from_json(cls, data: dict) -> Rule:
        return cls(Node.from_json(data["chooser"], ALGORITHMS), Node.from_json(data["im2col"], ("direct", "im2col")),
                   dict(data.get("info", {})))
