// convroute.js: runs a convroute browser bundle (convroute export-web) on the page's WebGPU device.
// One ES module, no build step, no dependencies.
//   const m = await Convroute.load("bundle/manifest.json", {device});
//   const y = await m.run(x);      // Float32Array in, Float32Array out
//   m.routes();                     // per conv: candidates, measured ms, choice; the dtype and why
//   await m.profile();              // per step ms, and the whole run
// Options of load: device (a GPUDevice; else one is requested), dtype ("auto", "float32", "float16"),
// family ("auto": the "cpu" plan on a software adapter, else the plan for the GPU's vendor, else the first;
// or a family the bundle has), route ("measure", "default", or {layer: algorithm}), budgetMs (time for
// measuring, default 4000), cache (false: no IndexedDB), onProgress(text).

const SCHEMA = "convroute.web.plan";
const VERSION = 2;
const VENDOR_FAMILIES = {arm: "mali", qualcomm: "adreno", nvidia: "nvidia", amd: "amd", intel: "intel",
                         apple: "apple", "img-tec": "powervr"};
const STORAGE = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

async function fetchOk(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`convroute: fetching ${url} failed: ${r.status} ${r.statusText}`);
  return r;
}

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b), n = s.length;
  return n ? (n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2) : NaN;
}

// Software adapters (Chromium's SwiftShader, Mesa's llvmpipe / lavapipe) run the "cpu" plans: register tiles
// on buffers, no workgroup memory or barriers (a barrier there switches coroutines).
export function isSoftwareAdapter(info) {
  if (!info) return false;
  if (info.isFallbackAdapter) return true;
  return /swiftshader|llvmpipe|lavapipe|software/i.test([info.vendor, info.architecture, info.device,
                                                         info.description].join(" "));
}

// The family whose plans the page runs: [family, why].
function pickFamily(families, info, wanted) {
  if (wanted !== "auto") {
    if (!families.includes(wanted)) throw new Error(`convroute: the bundle has no ${wanted} plan (it has ${families})`);
    return [wanted, "asked for"];
  }
  if (isSoftwareAdapter(info) && families.includes("cpu"))
    return ["cpu", `a software adapter (${info.architecture || info.description || info.vendor})`];
  const vendorFamily = info && VENDOR_FAMILIES[String(info.vendor).toLowerCase()];
  if (vendorFamily && families.includes(vendorFamily)) return [vendorFamily, `the adapter's vendor is ${info.vendor}`];
  const gpu = families.find((f) => f !== "cpu");
  return gpu ? [gpu, "the bundle's GPU plan"] : [families[0], "the bundle's only family"];
}

function adapterKey(info) {
  return info ? [info.vendor, info.architecture, info.device, info.description].join("|") : "unknown";
}

// ---- IndexedDB cache of measured routes ------------------------------------------------------------
const DB = "convroute", STORE = "routes";
function openDb() {
  return new Promise((resolve) => {
    if (typeof indexedDB === "undefined") return resolve(null);
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(null);
  });
}
async function cacheGet(key) {
  const db = await openDb();
  if (!db) return undefined;
  return new Promise((resolve) => {
    const req = db.transaction(STORE).objectStore(STORE).get(key);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(undefined);
  });
}
async function cachePut(key, value) {
  const db = await openDb();
  if (!db) return;
  await new Promise((resolve) => {
    const tx = db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).put(value, key);
    tx.oncomplete = resolve;
    tx.onerror = resolve;
  });
}
export async function clearRouteCache() {
  const db = await openDb();
  if (!db) return;
  await new Promise((resolve) => {
    const tx = db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).clear();
    tx.oncomplete = resolve;
    tx.onerror = resolve;
  });
}

// ---- the device --------------------------------------------------------------------------------
function neededLimits(plan, adapter) {
  let binding = 0, bindings = 0;
  for (const b of plan.buffers) binding = Math.max(binding, b.size);
  for (const s of plan.steps) {
    const lists = s.candidates ? Object.values(s.candidates) : [s.dispatches];
    for (const ds of lists) for (const d of ds) bindings = Math.max(bindings, d[1].length);
  }
  const want = {maxStorageBufferBindingSize: binding, maxBufferSize: binding,
                maxStorageBuffersPerShaderStage: bindings};
  const limits = {};
  for (const [k, v] of Object.entries(want)) {
    if (v > adapter.limits[k]) throw new Error(`convroute: the plan needs ${k} ${v}, the adapter offers ${adapter.limits[k]}`);
    limits[k] = Math.max(v, 0);
  }
  limits.maxStorageBufferBindingSize = Math.max(limits.maxStorageBufferBindingSize, 128 << 20);
  limits.maxBufferSize = Math.max(limits.maxBufferSize, 256 << 20);
  limits.maxStorageBuffersPerShaderStage = Math.max(limits.maxStorageBuffersPerShaderStage, 8);
  for (const k of Object.keys(limits)) limits[k] = Math.min(limits[k], adapter.limits[k]);
  return limits;
}

async function openAdapter() {
  if (!navigator.gpu) throw new Error("convroute: this browser has no WebGPU (navigator.gpu is missing)");
  const adapter = await navigator.gpu.requestAdapter({powerPreference: "high-performance"});
  if (!adapter) throw new Error("convroute: no WebGPU adapter");
  return adapter;
}

async function openDevice(adapter, plan) {
  const features = ["shader-f16", "timestamp-query"].filter((f) => adapter.features.has(f));
  return adapter.requestDevice({requiredFeatures: features, requiredLimits: neededLimits(plan, adapter)});
}

// ---- the model -----------------------------------------------------------------------------------
export class Model {
  constructor(device, info, manifest, plan, base, hash, dtypeReason) {
    this.device = device;
    this.adapterInfo = info;
    this.manifest = manifest;
    this.plan = plan;
    this.base = base;
    this.hash = hash;
    this.dtype = plan.dtype;
    this.dtypeReason = dtypeReason;
    this.inputShape = plan.input.shape;
    this.outputShape = plan.output.shape;
    this.choice = {};       // step index -> algorithm
    this.measured = {};     // step index -> {algorithm: ms}
    this.routeSource = "default";
    this.timestamps = device.features.has("timestamp-query");
  }

  async _build(shaderText) {
    const dev = this.device, plan = this.plan;
    dev.pushErrorScope("validation");
    this.buffers = plan.buffers.map((b) => {
      const usage = b.role === "uniform" ? GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST : STORAGE();
      return dev.createBuffer({size: b.size, usage, label: b.role});
    });
    const weights = this.weights;
    plan.buffers.forEach((b, i) => {
      if (b.data) dev.queue.writeBuffer(this.buffers[i], 0, new Uint32Array(b.data));
      else if (b.bytes !== undefined) dev.queue.writeBuffer(this.buffers[i], 0, weights, b.offset, b.bytes);
    });
    const modules = {};
    for (const [file, code] of Object.entries(shaderText)) modules[file] = dev.createShaderModule({code, label: file});
    this.pipelines = plan.pipelines.map((p) => dev.createComputePipeline({
      layout: "auto", label: p.shader,
      compute: {module: modules[p.shader], entryPoint: "main",
                ...(Object.keys(p.constants).length ? {constants: p.constants} : {})}}));
    const bind = (ds) => ds.map(([pipe, bufs, grid]) => ({
      pipeline: this.pipelines[pipe], grid,
      group: dev.createBindGroup({layout: this.pipelines[pipe].getBindGroupLayout(0),
                                  entries: bufs.map((b, i) => ({binding: i, resource: {buffer: this.buffers[b]}}))})}));
    this.steps = plan.steps.map((s) => s.candidates
      ? {name: s.name, op: s.op, conv: s.conv, reason: s.reason, default: s.default,
         candidates: Object.fromEntries(Object.entries(s.candidates).map(([k, ds]) => [k, bind(ds)]))}
      : {name: s.name, op: s.op, conv: s.conv, algorithm: s.algorithm, dispatches: bind(s.dispatches)});
    const error = await dev.popErrorScope();
    if (error) throw new Error(`convroute: building the plan failed: ${error.message}`);
    const out = this.plan.output;
    this.outCount = out.shape.reduce((a, b) => a * b, 1);
    this.outBytes = Math.ceil(this.outCount * (this.dtype === "float16" ? 2 : 4) / 4) * 4;
    this.readBuffer = dev.createBuffer({size: this.outBytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST});
  }

  // The dispatches of step i: its own, or the chosen candidate's.
  _dispatches(i, algorithm) {
    const s = this.steps[i];
    return s.candidates ? s.candidates[algorithm || this.choice[i] || s.default] : s.dispatches;
  }

  _encode(pass, dispatches) {
    for (const d of dispatches) {
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.group);
      pass.dispatchWorkgroups(d.grid[0], d.grid[1], d.grid[2]);
    }
  }

  _all() {
    return this.steps.flatMap((_, i) => this._dispatches(i));
  }

  /** Run the model on `input` (a Float32Array of the input shape's size); its output as a Float32Array. */
  async run(input) {
    const n = this.inputShape.reduce((a, b) => a * b, 1);
    if (!(input instanceof Float32Array) || input.length !== n)
      throw new Error(`convroute: run() takes a Float32Array of ${n} values (shape ${this.inputShape})`);
    const dev = this.device;
    dev.queue.writeBuffer(this.buffers[this.plan.input.buffer], 0, input);
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass();
    this._encode(pass, this._all());
    pass.end();
    enc.copyBufferToBuffer(this.buffers[this.plan.output.buffer], 0, this.readBuffer, 0, this.outBytes);
    dev.queue.submit([enc.finish()]);
    await this.readBuffer.mapAsync(GPUMapMode.READ);
    const raw = this.readBuffer.getMappedRange().slice(0);
    this.readBuffer.unmap();
    if (this.dtype === "float32") return new Float32Array(raw, 0, this.outCount);
    const halves = new Uint16Array(raw, 0, this.outCount);
    return Float32Array.from(halves, halfToFloat);
  }

  /** Milliseconds of `reps` passes of `dispatches` in one submission, per pass: GPU timestamps around the
   *  submission's passes when the device has them, else wall clock to the queue's done. */
  async _time(dispatches, reps) {
    const dev = this.device, enc = dev.createCommandEncoder();
    let qs = null, resolve = null, read = null;
    if (this.timestamps) {
      qs = dev.createQuerySet({type: "timestamp", count: 2});
      resolve = dev.createBuffer({size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC});
      read = dev.createBuffer({size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST});
    }
    for (let r = 0; r < reps; r++) {
      const desc = qs && (r === 0 || r === reps - 1)
        ? {timestampWrites: {querySet: qs, ...(r === 0 ? {beginningOfPassWriteIndex: 0} : {}),
                             ...(r === reps - 1 ? {endOfPassWriteIndex: 1} : {})}} : {};
      const pass = enc.beginComputePass(desc);
      this._encode(pass, dispatches);
      pass.end();
    }
    if (qs) {
      enc.resolveQuerySet(qs, 0, 2, resolve, 0);
      enc.copyBufferToBuffer(resolve, 0, read, 0, 16);
    }
    const t0 = performance.now();
    dev.queue.submit([enc.finish()]);
    await dev.queue.onSubmittedWorkDone();
    const wall = (performance.now() - t0) / reps;
    if (!qs) return wall;
    await read.mapAsync(GPUMapMode.READ);
    const [a, b] = new BigUint64Array(read.getMappedRange());
    const gpu = Number(b - a) / 1e6 / reps;
    read.unmap();
    qs.destroy(); resolve.destroy(); read.destroy();
    return gpu > 0 ? gpu : wall;  // timestamps read nonsense: the wall clock
  }

  /** Time every candidate of every routed conv (interleaved rounds, median), within budgetMs; pick the
   *  fastest per conv. Convs not reached within the budget keep the export's default. */
  async measure({budgetMs = 4000, minRounds = 3, maxRounds = 7, onProgress} = {}) {
    const routed = this.steps.map((s, i) => [s, i]).filter(([s]) => s.candidates);
    const start = performance.now();
    this.measured = {};
    for (const [k, [s, i]] of routed.entries()) {
      const left = budgetMs - (performance.now() - start);
      const share = left / (routed.length - k);
      if (left <= 0) break;
      const names = Object.keys(s.candidates), samples = Object.fromEntries(names.map((n) => [n, []]));
      const layerStart = performance.now();
      const reps = {};
      for (const n of names) {  // warm-up, and the repetitions that make one sample ~2 ms
        const once = await this._time(s.candidates[n], 1);
        reps[n] = Math.max(1, Math.min(20, Math.round(2 / Math.max(once, 1e-3))));
      }
      for (let round = 0; round < maxRounds; round++) {
        for (const n of names) samples[n].push(await this._time(s.candidates[n], reps[n]));
        if (round + 1 >= minRounds && performance.now() - layerStart > share) break;
        if (performance.now() - start > budgetMs) break;  // the budget bounds every layer's rounds too
      }
      this.measured[i] = Object.fromEntries(names.map((n) => [n, median(samples[n])]));
      this.choice[i] = names.reduce((a, b) => (this.measured[i][b] < this.measured[i][a] ? b : a));
      if (onProgress) onProgress(`measured ${s.name}: ${this.choice[i]}`);
    }
    this.routeSource = "measured";
    return this.routes();
  }

  /** Time each candidate of the routed conv `layer` again (median of `rounds` interleaved rounds), without
   *  changing the choice: {algorithm: ms}. */
  async timeLayer(layer, {rounds = 5} = {}) {
    const s = this.steps.find((t) => t.name === layer && t.candidates);
    if (!s) throw new Error(`convroute: no routed conv named ${layer}`);
    const names = Object.keys(s.candidates), samples = Object.fromEntries(names.map((n) => [n, []]));
    for (const n of names) await this._time(s.candidates[n], 1);
    for (let r = 0; r < rounds; r++) for (const n of names) samples[n].push(await this._time(s.candidates[n], 1));
    return Object.fromEntries(names.map((n) => [n, median(samples[n])]));
  }

  /** Each routed conv: the candidates with their measured ms (when measured) and the choice; the dtype. */
  routes() {
    const layers = [];
    this.steps.forEach((s, i) => {
      if (s.op !== "convolution") return;
      if (!s.candidates) {
        layers.push({layer: s.name, conv: s.conv, chosen: s.algorithm, candidates: [s.algorithm], source: "fixed"});
        return;
      }
      const chosen = this.choice[i] || s.default;
      layers.push({layer: s.name, conv: s.conv, chosen, default: s.default, candidates: Object.keys(s.candidates),
                   timesMs: this.measured[i] || null,
                   source: this.measured[i] ? this.routeSource : (this.choice[i] ? "given" : "default")});
    });
    return {dtype: this.dtype, dtypeReason: this.dtypeReason, adapter: this.adapterInfo && {
              vendor: this.adapterInfo.vendor, architecture: this.adapterInfo.architecture,
              device: this.adapterInfo.device, description: this.adapterInfo.description},
            timing: this.timestamps ? "gpu timestamps" : "wall clock", hash: this.hash,
            policy: this.plan.policy, family: this.plan.family, familyReason: this.familyReason, layers};
  }

  /** Per step ms (each step alone, median of `runs`) and the whole run's median wall ms (upload, submit,
   *  read-back included). */
  async profile({runs = 5} = {}) {
    const steps = [];
    for (let i = 0; i < this.steps.length; i++) {
      const ds = this._dispatches(i), xs = [];
      await this._time(ds, 1);
      for (let r = 0; r < runs; r++) xs.push(await this._time(ds, 1));
      steps.push({name: this.steps[i].name, op: this.steps[i].op, ms: median(xs)});
    }
    const x = new Float32Array(this.inputShape.reduce((a, b) => a * b, 1)).fill(0.5), totals = [];
    await this.run(x);
    for (let r = 0; r < runs; r++) {
      const t0 = performance.now();
      await this.run(x);
      totals.push(performance.now() - t0);
    }
    return {steps, runMs: median(totals), gpuPassMs: await this._time(this._all(), 1),
            timing: this.timestamps ? "gpu timestamps" : "wall clock"};
  }

  destroy() {
    for (const b of this.buffers || []) b.destroy();
    this.readBuffer?.destroy();
  }
}

export const Convroute = {
  /** Load a bundle: `url` is its manifest.json (or its directory, ending in "/"). */
  async load(url, options = {}) {
    const {device: given, dtype = "auto", route = "measure", budgetMs = 4000, cache = true, onProgress} = options;
    const manifestUrl = new URL(url.endsWith("/") ? url + "manifest.json" : url, location.href);
    const manifest = await (await fetchOk(manifestUrl)).json();
    if (manifest.schema !== SCHEMA || manifest.version !== VERSION)
      throw new Error(`convroute: ${manifestUrl} is ${manifest.schema} v${manifest.version}; this convroute.js reads ${SCHEMA} v${VERSION}`);
    const base = new URL(".", manifestUrl);
    const entries = manifest.plans;
    const adapter = given ? null : await openAdapter();
    const info = given ? given.adapterInfo || null : adapter.info;
    const families = [...new Set(Object.values(entries).map((e) => e.family))];
    const [family, familyReason] = pickFamily(families, info, options.family || "auto");
    const ofFamily = Object.fromEntries(Object.entries(entries).filter(([, e]) => e.family === family)
                                        .map(([key, e]) => [e.dtype, key]));
    const f16 = given ? given.features.has("shader-f16") : adapter.features.has("shader-f16");
    let chosen, reason;
    if (dtype === "auto") {
      if (f16 && ofFamily.float16) [chosen, reason] = ["float16", "the adapter has shader-f16"];
      else if (ofFamily.float32) [chosen, reason] = ["float32", f16 ? "the bundle has no float16 plan" : "the adapter has no shader-f16"];
      else throw new Error("convroute: the bundle has only a float16 plan and the adapter has no shader-f16");
    } else {
      if (!ofFamily[dtype]) throw new Error(`convroute: the bundle has no ${family} ${dtype} plan (it has ${Object.keys(entries)})`);
      if (dtype === "float16" && !f16) throw new Error("convroute: float16 needs the adapter feature shader-f16");
      [chosen, reason] = [dtype, "asked for"];
    }
    const key = ofFamily[chosen];
    const plan = await (await fetchOk(new URL(entries[key].plan, base))).json();
    const device = given || await openDevice(adapter, plan);
    const files = [...new Set(plan.pipelines.map((p) => p.shader))];
    const [weights, ...codes] = await Promise.all([
      fetchOk(new URL(plan.weights, base)).then((r) => r.arrayBuffer()),
      ...files.map((f) => fetchOk(new URL(f, base)).then((r) => r.text()))]);
    const model = new Model(device, info, manifest, plan, base, entries[key].hash, reason);
    model.familyReason = familyReason;
    model.weights = weights;
    await model._build(Object.fromEntries(files.map((f, i) => [f, codes[i]])));
    model.weights = null;
    if (typeof route === "object") {
      model.steps.forEach((s, i) => { if (s.candidates && route[s.name]) model.choice[i] = route[s.name]; });
      model.routeSource = "given";
    } else if (route === "measure" && model.steps.some((s) => s.candidates)) {
      const cacheKey = `${adapterKey(info)}|${model.hash}`;
      const cached = cache ? await cacheGet(cacheKey) : undefined;
      if (cached) {
        model.choice = cached.choice; model.measured = cached.measured; model.routeSource = "cached";
      } else {
        await model.measure({budgetMs, onProgress});
        if (cache) await cachePut(cacheKey, {choice: model.choice, measured: model.measured});
      }
    }
    return model;
  },
};

export default Convroute;
