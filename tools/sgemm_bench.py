"""SGEMM experiments: C[M,N] = A[M,K] @ B[K,N], row-major fp32, WGSL generated per tile shape.

Usage: python tools/sgemm_bench.py [SIZE ...]   (default 4096). Prints GFLOP/s per variant, checked vs numpy.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import wgpu

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


def gemm_wgsl(bm: int, bn: int, bk: int, tm: int, tn: int) -> str:
    """Register-tiled GEMM: (bm/tm)*(bn/tn) threads, each tm x tn outputs, double-buffered workgroup tiles.

    A: [M, lda] with lda % bk == 0 and zero padding; B: [Kpad, ldb] vec4 rows, ldb % 4 == 0.
    Each thread's tm rows are split in tm/4 groups of 4 spaced bm/(tm/4) apart (same for columns), so the
    vec4 reads from workgroup memory are contiguous across threads.
    """
    tx_n, ty_n = bn // tn, bm // tm
    threads = tx_n * ty_n
    a_vec4 = bm * bk // 4  # vec4 loads per A tile
    b_vec4 = bk * bn // 4
    assert a_vec4 % threads == 0 and b_vec4 % threads == 0
    a_per, b_per = a_vec4 // threads, b_vec4 // threads
    rg, cg = tm // 4, tn // 4  # row / column groups of 4
    lines = []
    emit = lines.append
    emit(f"""
struct Params {{ m: u32, n: u32, k: u32, lda4: u32, ldb4: u32, ldc: u32, tiles_n: u32, pad: u32 }}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> B: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;
var<workgroup> As: array<array<vec4<f32>, {bm // 4 * bk}>, 2>;
var<workgroup> Bs: array<array<vec4<f32>, {bn // 4 * bk}>, 2>;
@compute @workgroup_size({threads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
  let tile = wid.x + wid.y * nwg.x;
  let row0 = (tile / P.tiles_n) * {bm}u;
  let col0 = (tile % P.tiles_n) * {bn}u;
  let tx = lid % {tx_n}u;
  let ty = lid / {tx_n}u;
  let ktiles = (P.k + {bk - 1}u) / {bk}u;""")
    for i in range(rg * tn):
        emit(f"  var acc{i}: vec4<f32>;")
    # global -> register loads for one k-tile
    def load_regs(kt: str) -> None:
        for j in range(a_per):
            emit(f"    {{ let e = lid + {j * threads}u; let r = e / {bk // 4}u; let c4 = e % {bk // 4}u;"
                 f" let gr = row0 + r;"
                 f" ra{j} = select(vec4<f32>(0.0), A[min(gr, P.m - 1u) * P.lda4 + {kt} * {bk // 4}u + c4],"
                 f" gr < P.m); }}")
        for j in range(b_per):
            emit(f"    {{ let e = lid + {j * threads}u; let r = e / {bn // 4}u; let c4 = e % {bn // 4}u;"
                 f" let gc4 = col0 / 4u + c4;"
                 f" rb{j} = select(vec4<f32>(0.0), B[({kt} * {bk}u + r) * P.ldb4 + min(gc4, P.ldb4 - 1u)],"
                 f" gc4 < P.ldb4); }}")

    def store_regs(buf: str) -> None:
        # A is stored transposed: As[k][m] as vec4 over m, written one scalar at a time.
        for j in range(a_per):
            emit(f"    {{ let e = lid + {j * threads}u; let r = e / {bk // 4}u; let c4 = e % {bk // 4}u;")
            for q, comp in enumerate("xyzw"):
                emit(f"      As[{buf}][(c4 * 4u + {q}u) * {bm // 4}u + r / 4u][r % 4u] = ra{j}.{comp};")
            emit("    }")
        for j in range(b_per):
            emit(f"    {{ let e = lid + {j * threads}u; Bs[{buf}][e] = rb{j}; }}")

    for j in range(a_per):
        emit(f"  var ra{j}: vec4<f32>;")
    for j in range(b_per):
        emit(f"  var rb{j}: vec4<f32>;")
    emit("  {")
    load_regs("0u")
    store_regs("0u")
    emit("  }")
    emit("  workgroupBarrier();")
    emit("  for (var kt = 0u; kt < ktiles; kt++) {")
    emit("    let cur = kt % 2u;")
    emit("    let more = kt + 1u < ktiles;")
    emit("    if (more) {")
    load_regs("(kt + 1u)")
    emit("    }")
    emit(f"    for (var kk = 0u; kk < {bk}u; kk++) {{")
    for g in range(rg):
        emit(f"      let a{g} = As[cur][kk * {bm // 4}u + ty + {g * ty_n}u];")
    for g in range(cg):
        emit(f"      let b{g} = Bs[cur][kk * {bn // 4}u + tx + {g * tx_n}u];")
    for g in range(rg):
        for r, comp in enumerate("xyzw"):
            for h in range(cg):
                emit(f"      acc{(g * 4 + r) * cg + h} = fma(vec4<f32>(a{g}.{comp}), b{h}, acc{(g * 4 + r) * cg + h});")
    emit("    }")
    emit("    if (more) {")
    store_regs("1u - cur")
    emit("    }")
    emit("    workgroupBarrier();")
    emit("  }")
    for g in range(rg):
        for r in range(4):
            emit(f"  {{ let row = row0 + (ty + {g * ty_n}u) * 4u + {r}u;")
            emit("    if (row < P.m) {")
            for h in range(cg):
                emit(f"      {{ let col = col0 + (tx + {h * tx_n}u) * 4u; let v = acc{(g * 4 + r) * cg + h};")
                for q, comp in enumerate("xyzw"):
                    emit(f"        if (col + {q}u < P.n) {{ C[row * P.ldc + col + {q}u] = v.{comp}; }}")
                emit("      }")
            emit("    }")
            emit("  }")
    emit("}")
    return "\n".join(lines)


VARIANTS = [  # bm, bn, bk, tm, tn
    (64, 64, 16, 4, 4),
    (128, 128, 8, 8, 8),
    (128, 128, 16, 8, 8),
    (128, 64, 16, 8, 4),
    (64, 128, 16, 4, 8),
]


def main(sizes):
    adapters = wgpu.gpu.enumerate_adapters_sync()
    adapter = sorted(adapters, key=lambda a: (a.info["backend_type"] != "Vulkan", a.info["adapter_type"] == "CPU"))[0]
    print("adapter:", adapter.info["device"], adapter.info["backend_type"], adapter.info["description"])
    print("features:", sorted(adapter.features))
    lim = adapter.limits
    dev = adapter.request_device_sync(
        required_features=["timestamp-query"],
        required_limits={k: lim[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                                              "max-compute-workgroup-storage-size",
                                              "max-compute-invocations-per-workgroup")})
    rng = np.random.default_rng(0)
    S = wgpu.BufferUsage
    for size in sizes:
        m = n = k = size
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        ba = dev.create_buffer_with_data(data=a, usage=S.STORAGE)
        bb = dev.create_buffer_with_data(data=b, usage=S.STORAGE)
        bc = dev.create_buffer(size=m * n * 4, usage=S.STORAGE | S.COPY_SRC | S.COPY_DST)
        for v in VARIANTS:
            bm, bn, bk, tm, tn = v
            try:
                t0 = time.time()
                src = gemm_wgsl(*v)
                mod = dev.create_shader_module(code=src)
                pipe = dev.create_compute_pipeline(layout="auto", compute={"module": mod, "entry_point": "main"})
                compile_s = time.time() - t0
            except Exception as e:  # report and go on with the next variant
                print(v, "failed:", str(e)[:300])
                continue
            tiles_n = -(-n // bn)
            tiles = -(-m // bm) * tiles_n
            u = dev.create_buffer_with_data(
                data=np.array([m, n, k, k // 4, n // 4, n, tiles_n, 0], np.uint32), usage=S.UNIFORM)
            bg = dev.create_bind_group(layout=pipe.get_bind_group_layout(0), entries=[
                {"binding": i, "resource": {"buffer": x}} for i, x in enumerate((u, ba, bb, bc))])
            grid = (min(tiles, 65535), -(-tiles // 65535), 1)
            dev.queue.write_buffer(bc, 0, np.full(m * n, np.nan, np.float32))
            qs = dev.create_query_set(type="timestamp", count=2)
            qb = dev.create_buffer(size=16, usage=S.QUERY_RESOLVE | S.COPY_SRC)
            reps = 20

            def run(timed):
                enc = dev.create_command_encoder()
                kw = {"timestamp_writes": {"query_set": qs, "beginning_of_pass_write_index": 0,
                                           "end_of_pass_write_index": 1}} if timed else {}
                p = enc.begin_compute_pass(**kw)
                p.set_pipeline(pipe)
                p.set_bind_group(0, bg)
                for _ in range(reps if timed else 1):
                    p.dispatch_workgroups(*grid)
                p.end()
                if timed:
                    enc.resolve_query_set(qs, 0, 2, qb, 0)
                dev.queue.submit([enc.finish()])

            run(False)
            out = np.frombuffer(dev.queue.read_buffer(bc), np.float32).reshape(m, n)
            err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            times = []
            for _ in range(5):
                run(True)
                ts = np.frombuffer(dev.queue.read_buffer(qb), np.uint64)
                times.append((int(ts[1]) - int(ts[0])) / reps * 1e-9)
            t = float(np.median(times))
            print(f"{size} {v}: {2 * m * n * k / t / 1e12:6.2f} TFLOP/s  {t * 1e3:8.3f} ms  err {err:.1e}"
                  f"  compile {compile_s:.2f}s", flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [4096])
