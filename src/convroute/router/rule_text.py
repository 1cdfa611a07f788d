"""A derived rule as source text: Python functions of a ConvParams, and C++ in ET-VK's style (a drop-in body
for `should_use_conv2d_im2col` and a full method chooser over convroute's algorithms)."""

from __future__ import annotations

from convroute.kernels import ALGORITHMS
from convroute.router.rule import Node, Rule
from convroute.router.seed import IM2COL_MIN_COUT

PY_FEATURES = {
    "groups": "p.groups", "dilation": "max(p.dilation)", "kernel_area": "p.kh * p.kw", "c_in": "p.c_in",
    "c_out": "p.c_out", "out_pixels": "p.ho * p.wo", "gather": "p.n * p.ho * p.wo * (p.c_in // p.groups) * p.kh * p.kw",
}
CPP_FEATURES = {
    "groups": "s.groups", "dilation": "std::max(s.dilation_h, s.dilation_w)", "kernel_area": "s.kernel_h * s.kernel_w",
    "c_in": "s.c_in", "c_out": "s.c_out", "out_pixels": "s.out_h * s.out_w",
    "gather": "s.batch * s.out_h * s.out_w * (s.c_in / s.groups) * s.kernel_h * s.kernel_w",
}
CPP_ALGORITHMS = {n: "k" + "".join(part.capitalize() for part in n.split("_")) for n in ALGORITHMS}
CPP_FAMILIES = ("mali", "adreno", "nvidia", "amd", "intel", "apple", "powervr", "cpu", "unknown")
# where each algorithm can run (kernels' `unsupported`), for the C++ chooser's fallback
CPP_CAN_RUN = {
    "direct": "!s.transposed",
    "im2col": "!s.transposed && s.groups == 1",
    "pointwise": "!s.transposed && s.kernel_h == 1 && s.kernel_w == 1 && s.groups == 1",
    "depthwise": "!s.transposed && s.groups == s.c_in && s.c_out % s.c_in == 0",
    "transposed": "s.transposed",
    "implicit_gemm": "!s.transposed && s.groups == 1",
    "winograd2": ("!s.transposed && s.kernel_h == 3 && s.kernel_w == 3 && s.stride_h == 1 && s.stride_w == 1 && "
                  "s.dilation_h == 1 && s.dilation_w == 1 && s.groups == 1"),
}
CPP_CAN_RUN["winograd4"] = CPP_CAN_RUN["winograd2"]


def fitted_on(rule: Rule) -> str:
    runs = rule.info.get("fitted_on", [])
    devices = "; ".join(f"{r['device']} ({r['family']}, {r['shapes']} shapes)" for r in runs) or "?"
    return f"fitted by `convroute derive-rule` on {devices}, objective {rule.info.get('objective', '?')}"


def used_features(*nodes: Node) -> list[str]:
    found: set[str] = set()

    def walk(node: Node) -> None:
        if node.leaf is None:
            found.add(node.feature)
            walk(node.yes)
            walk(node.no)

    for node in nodes:
        walk(node)
    return [name for name in PY_FEATURES if name in found]


def tree_lines(node: Node, indent: str, leaf, test, cpp: bool = False) -> list[str]:
    """The tree as nested ifs: Python (4-space steps, `else:`) or C++ (2-space steps, braces)."""
    if node.leaf is not None:
        return [f"{indent}{leaf(node.leaf)}"]
    inner = indent + ("  " if cpp else "    ")
    yes, no = (tree_lines(branch, inner, leaf, test, cpp) for branch in (node.yes, node.no))
    if cpp:
        return [f"{indent}{test(node)}", *yes, f"{indent}}} else {{", *no, f"{indent}}}"]
    return [f"{indent}{test(node)}", *yes, f"{indent}else:", *no]


def py_tuple(leaf: str) -> str:
    names = leaf.split(",")
    return f'("{names[0]}",)' if len(names) == 1 else "(" + ", ".join(f'"{n}"' for n in names) + ")"


def py_test(node: Node) -> str:
    if node.feature == "family":
        return f'if family == "{node.threshold}":'
    return f"if {node.feature} >= {node.threshold}:"


def to_python(rule: Rule) -> str:
    """`derived_preference(p, family)` and `should_use_conv2d_im2col(p, family)`; p is a convroute ConvParams."""
    lines = [f"# {fitted_on(rule)}", "", "", "def derived_preference(p, family: str) -> tuple[str, ...]:",
             '    """Algorithms to try in order: convroute takes the first that can run p and is not excluded on the',
             '    device, and routes as seed where none is."""',
             "    if p.transposed:", '        return ("transposed",)']
    lines += [f"    {name} = {PY_FEATURES[name]}" for name in used_features(rule.chooser)]
    lines += tree_lines(rule.chooser, "    ", lambda leaf: f"return {py_tuple(leaf)}", py_test)
    lines += ["", "", "def should_use_conv2d_im2col(p, family: str) -> bool:",
              '    """im2col or direct for a sliding-window conv, below ET-VK\'s guards."""',
              "    if p.transposed or p.groups != 1 or p.dilation != (1, 1) or p.kh * p.kw == 1:",
              "        return False"]
    lines += [f"    {name} = {PY_FEATURES[name]}" for name in used_features(rule.im2col)]
    lines += tree_lines(rule.im2col, "    ", lambda leaf: f"return {leaf == 'im2col'}", py_test)
    return "\n".join(lines) + "\n"


def cpp_test(node: Node) -> str:
    if node.feature == "family":
        return f"if (family == GpuFamily::k{node.threshold.capitalize()}) {{"
    return f"if ({node.feature} >= {node.threshold}) {{"


def cpp_leaf(leaf: str) -> str:
    names = ", ".join(f"Conv2dAlgorithm::{CPP_ALGORITHMS[n]}" for n in leaf.split(","))
    return f"return first_runnable({{{names}}}, s, family);"


def cpp_locals(nodes: list[Node], indent: str) -> list[str]:
    return [f"{indent}const int64_t {name} = {CPP_FEATURES[name]};" for name in used_features(*nodes)]


CPP_TEMPLATE = """\
// {fitted_on}
#include <algorithm>
#include <cstdint>
#include <initializer_list>

namespace convroute_derived {{

enum class GpuFamily {{ {families} }};
enum class Conv2dAlgorithm {{ {algorithms} }};

struct Conv2dShape {{
  int64_t batch, c_in, c_out, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, groups;
  int64_t out_h, out_w;
  bool transposed;
}};

// Preconditions as ET-VK: groups == 1 and dilation == 1, called for sliding-window convs (Kh*Kw > 1).
bool should_use_conv2d_im2col(const Conv2dShape& s, const GpuFamily family) {{
  (void)family;
  if (s.transposed || s.groups != 1 || s.dilation_h != 1 || s.dilation_w != 1 ||
      s.kernel_h * s.kernel_w == 1) {{
    return false;
  }}
{im2col}
}}

bool can_run(const Conv2dAlgorithm algorithm, const Conv2dShape& s) {{
  switch (algorithm) {{
{can_run}
  }}
  return false;
}}

// ET-VK PR #20059's routing, where the chooser's algorithm cannot run.
Conv2dAlgorithm seed_conv2d_algorithm(const Conv2dShape& s, const GpuFamily family) {{
  if (s.transposed) {{
    return Conv2dAlgorithm::kTransposed;
  }}
  if (s.c_out == s.groups && s.c_in == s.groups) {{
    return Conv2dAlgorithm::kDepthwise;
  }}
  if (s.kernel_h == 1 && s.kernel_w == 1 && s.groups == 1) {{
    return Conv2dAlgorithm::kPointwise;
  }}
  if (s.groups != 1 || s.dilation_h != 1 || s.dilation_w != 1) {{
    return Conv2dAlgorithm::kDirect;
  }}
  if (family == GpuFamily::kMali || s.c_out >= {min_cout}) {{
    return Conv2dAlgorithm::kIm2col;
  }}
  return Conv2dAlgorithm::kDirect;
}}

// The first of the leaf's algorithms that can run the conv, else the seed's. (An algorithm excluded on the
// device, by a denylist or for wrong results, counts as one that cannot run.)
Conv2dAlgorithm first_runnable(
    const std::initializer_list<Conv2dAlgorithm> preferred,
    const Conv2dShape& s,
    const GpuFamily family) {{
  for (const Conv2dAlgorithm algorithm : preferred) {{
    if (can_run(algorithm, s)) {{
      return algorithm;
    }}
  }}
  return seed_conv2d_algorithm(s, family);
}}

// The derived chooser.
Conv2dAlgorithm choose_conv2d_algorithm(const Conv2dShape& s, const GpuFamily family) {{
  if (s.transposed) {{
    return Conv2dAlgorithm::kTransposed;
  }}
{chooser}
}}

}}  // namespace convroute_derived
"""


def to_cpp(rule: Rule) -> str:
    """Self-contained C++17: the shape struct, the relearned `should_use_conv2d_im2col`, and
    `choose_conv2d_algorithm` with the seed rule (ET-VK PR #20059) it falls back to."""
    im2col = cpp_locals([rule.im2col], "  ") + tree_lines(
        rule.im2col, "  ", lambda leaf: f"return {'true' if leaf == 'im2col' else 'false'};", cpp_test, cpp=True)
    chooser = cpp_locals([rule.chooser], "  ") + tree_lines(rule.chooser, "  ", cpp_leaf, cpp_test, cpp=True)
    can_run = [line for name, enum in CPP_ALGORITHMS.items()
               for line in (f"    case Conv2dAlgorithm::{enum}:", f"      return {CPP_CAN_RUN[name]};")]
    return CPP_TEMPLATE.format(
        fitted_on=fitted_on(rule), families=", ".join(f"k{f.capitalize()}" for f in CPP_FAMILIES),
        algorithms=", ".join(CPP_ALGORITHMS.values()), im2col="\n".join(im2col), can_run="\n".join(can_run),
        min_cout=IM2COL_MIN_COUT, chooser="\n".join(chooser))


JS_FEATURES = {
    "groups": "p.groups", "dilation": "Math.max(...p.dilation)", "kernel_area": "p.kh * p.kw", "c_in": "p.c_in",
    "c_out": "p.c_out", "out_pixels": "p.ho * p.wo",
    "gather": "p.n * p.ho * p.wo * Math.floor(p.c_in / p.groups) * p.kh * p.kw",
}


def js_test(node: Node) -> str:
    if node.feature == "family":
        return f'if (family === "{node.threshold}") {{'
    return f"if ({node.feature} >= {node.threshold}) {{"


def js_locals(nodes: list[Node], indent: str) -> list[str]:
    return [f"{indent}const {name} = {JS_FEATURES[name]};" for name in used_features(*nodes)]


def to_javascript(rule: Rule) -> str:
    """An ES module with `derivedPreference(p, family)` and `shouldUseConv2dIm2col(p, family)`, the Python's
    twins; p: {n, c_in, c_out, ho, wo, kh, kw, groups, dilation: [h, w], transposed} (ConvParams' names)."""
    lines = [f"// {fitted_on(rule)}", "",
             "// Algorithms to try in order: the first that can run p and is not excluded on the device.",
             "export function derivedPreference(p, family) {",
             '  if (p.transposed) return ["transposed"];']
    lines += js_locals([rule.chooser], "  ")
    lines += tree_lines(rule.chooser, "  ", lambda leaf: f"return {json_list(leaf)};", js_test, cpp=True)
    lines += ["}", "", "// im2col or direct for a sliding-window conv, below ET-VK's guards.",
              "export function shouldUseConv2dIm2col(p, family) {",
              "  if (p.transposed || p.groups !== 1 || p.dilation[0] !== 1 || p.dilation[1] !== 1 || "
              "p.kh * p.kw === 1) return false;"]
    lines += js_locals([rule.im2col], "  ")
    lines += tree_lines(rule.im2col, "  ", lambda leaf: f"return {str(leaf == 'im2col').lower()};", js_test,
                        cpp=True)
    return "\n".join(lines + ["}"]) + "\n"


def json_list(leaf: str) -> str:
    return "[" + ", ".join(f'"{n}"' for n in leaf.split(",")) + "]"
