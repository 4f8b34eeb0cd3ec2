"""Where the int8 cross-encoder's time goes, and int8 graphs compared (issue 13).

profile: runs an ONNX graph in Python onnxruntime with its per-operator profiler
(SessionOptions.enable_profiling) on the batches the engine runs: the 100 first-stage
candidates of the first QUERIES dev queries (dev_reference.tsv), tokenized from the
model's tokenizer.json, sorted by length and cut into batches under the engine's CPU
limits (crates/engine/src/batch.rs: 4 pairs, 2,048 tokens; --pairs/--tokens change
them), each padded to its longest pair. Prints and writes the kernel time per operator
type and its share; the optimizer's own nodes (DynamicQuantizeMatMul, QAttention, ...)
are reported under their own names.

    python benches/int8_profile.py profile SHARED MODEL.onnx [--threads 2] [--queries 5]
        [--pairs 4] [--tokens 2048] [--repeat 2] [--out results/int8_profile.json]

compare: times, in one run and in alternating rounds, the engine (bench_engine) on each
given graph and Python onnxruntime on the shared model_int8.onnx in length-sorted
batches of 16 and of 4 (the same candidates, threads and padding), and reports pairs/s
and each round's ratios against Python onnxruntime with batches of 16.

    python benches/int8_profile.py compare SHARED ENGINE_BIN MODEL.onnx [MODEL.onnx ...]
        [--threads 2] [--queries 3] [--rounds 4] [--out results/int8_compare.json]

Each MODEL is an .onnx file; the engine loads it beside the shared model's tokenizer.json.
With --cpu, pairs per CPU second instead of per second (steadier on a busy machine; use it
with --threads 1, where neither side has a thread pool).

variants: writes the candidate int8 graphs of the levers tried (see `variants` below).

    python benches/int8_profile.py variants SHARED OUT_DIR

settings: Python onnxruntime session settings on one graph (see `settings` below).

    python benches/int8_profile.py settings SHARED MODEL.onnx [--threads 2] [--cpu] [--only a,b]

quality: NDCG@10 on the 50 reference dev queries and mean |logit - fp32 reference| of
each graph, in the engine's batches.

    python benches/int8_profile.py quality SHARED MODEL.onnx [MODEL.onnx ...] [--out FILE]
"""
import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devset  # noqa: E402
from feeds import padded  # noqa: E402


def plan(lengths, max_pairs, max_tokens):
    """crates/engine/src/batch.rs's plan: longest first (stable), then cut into batches of
    at most max_pairs rows whose rows x longest stays within max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur, longest = [], [], 0
    for i in order:
        n = max(lengths[i], 1)
        width = max(longest, n)
        if cur and (len(cur) >= max_pairs or (len(cur) + 1) * width > max_tokens):
            batches.append(cur)
            cur, longest = [], 0
        longest = max(longest, n)
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def calls(shared, queries):
    """[(query text, [document text])] of the first `queries` dev queries, candidates in
    first-stage order, as bench_engine reads them."""
    return [(query, docs) for _, query, _, docs in devset.reference_calls(Path(shared) / "data" / "debian", queries)]


def feeds(tokenizer, query, docs, max_pairs, max_tokens):
    """[(row indices, inputs)] of one call, batched as the engine batches."""
    encs = tokenizer.encode_batch([(query, d) for d in docs])
    out = []
    for rows in plan([len(e.ids) for e in encs], max_pairs, max_tokens):
        out.append((rows, padded(encs, rows)))
    return out


def session(path, threads, profile_prefix=None, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def scorer(path, tokenizer, threads, max_pairs, max_tokens=1 << 30):
    sess = session(path, threads)
    names = {i.name for i in sess.get_inputs()}

    def score(query, docs):
        out = np.zeros(len(docs), np.float32)
        for rows, feed in feeds(tokenizer, query, docs, max_pairs, max_tokens):
            out[rows] = sess.run(None, {k: v for k, v in feed.items() if k in names})[0][:, 0]
        return out
    return score


def profile(args):
    model = Path(args.model)
    tok = Tokenizer.from_file(str(Path(args.shared) / "models" / "minilm-debian" / "tokenizer.json"))
    work = calls(args.shared, args.queries)
    batches = [f for q, d in work for f in feeds(tok, q, d, args.pairs, args.tokens)]
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(model, args.threads, profile_prefix=str(Path(tmp) / "ort"))
        names = {i.name for i in sess.get_inputs()}
        for _, feed in batches[:3]:  # warm-up, not in the totals below
            sess.run(None, {k: v for k, v in feed.items() if k in names})
        wall = time.perf_counter()
        for _ in range(args.repeat):
            for _, feed in batches:
                sess.run(None, {k: v for k, v in feed.items() if k in names})
        wall = time.perf_counter() - wall
        trace = json.load(open(sess.end_profiling()))
    # Kernel times of the timed runs: the profiler's clock starts with the session, so
    # drop the events before the first timed run by their order instead: the warm-up's
    # model_run events come first.
    runs = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"]
    start = runs[3]["ts"] if len(runs) > 3 else 0
    by_op, count = collections.Counter(), collections.Counter()
    run_us = sum(e["dur"] for e in runs[3:])
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"]["op_name"]
            by_op[op] += e["dur"]
            count[op] += 1
    kernels = sum(by_op.values())
    rows = [{"op": op, "ms": us / 1e3, "share_of_kernels": us / kernels, "nodes_run": count[op]}
            for op, us in by_op.most_common()]
    pairs = args.repeat * sum(len(r) for r, _ in batches)
    result = {"model": str(model), "threads": args.threads, "queries": args.queries, "max_pairs": args.pairs,
              "max_tokens": args.tokens, "batches_per_round": len(batches), "repeat": args.repeat,
              "pairs_per_s": pairs / wall, "model_run_ms": run_us / 1e3, "kernel_ms": kernels / 1e3,
              "ops": rows}
    if args.out:
        json.dump(result, open(args.out, "w"), indent=1)
    print(f"{model.name}: {len(batches)} batches x {args.repeat}, {args.threads} thread(s), "
          f"{pairs / wall:.1f} pairs/s (profiler on); kernels {kernels / 1e3:.0f} ms of {run_us / 1e3:.0f} ms in model_run")
    print(f"{'op type':28s} {'ms':>9s} {'share':>7s} {'nodes run':>10s}")
    for r in rows:
        print(f"{r['op']:28s} {r['ms']:9.1f} {100 * r['share_of_kernels']:6.1f}% {r['nodes_run']:10d}")


def model_dir_of(arg, shared, tmp, k):
    """A shared root for bench_engine (which loads ROOT/models/minilm-debian/FILE and reads
    ROOT/data): the graph `arg` beside links to the shared model's tokenizer and config
    files, and a link to the shared data. Returns (root, file name)."""
    onnx = Path(arg).resolve()
    src = Path(shared).resolve() / "models" / "minilm-debian"
    root = Path(tmp) / f"shared{k}"
    d = root / "models" / "minilm-debian"
    d.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".onnx":
            os.symlink(f, d / f.name)
    os.symlink(onnx, d / onnx.name)
    os.symlink(Path(shared).resolve() / "data", root / "data")
    return root, onnx.name


def engine(binary, root, file, threads, queries, cpu=False):
    """bench_engine's pairs/s; with `cpu`, pairs per CPU second of its process instead:
    the CPU time of a run with 3 rounds less that of a run with 1 round (loading the
    model and the inputs and the warm-up call cancel out), over the pairs of 2 rounds."""
    def run(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([binary, str(root), file, str(threads), str(queries), str(repeat)], check=True,
                             capture_output=True, text=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return json.loads(out), (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if not cpu:
        r, _ = run(1)
        return r["pairs"] / r["wall_s"]
    r1, c1 = run(1)
    r3, c3 = run(3)
    return (r3["pairs"] - r1["pairs"]) / (c3 - c1)


def python_rate(score, work, cpu=False):
    """pairs/s of `score` over the calls; with `cpu`, pairs per CPU second of this process
    (tokenizing included, as in the engine's figure)."""
    clock = time.process_time if cpu else time.perf_counter
    t0 = clock()
    n = 0
    for q, d in work:
        score(q, d)
        n += len(d)
    return n / (clock() - t0)


def compare(args):
    int8 = Path(args.shared) / "models" / "minilm-debian" / "model_int8.onnx"
    tok = Tokenizer.from_file(str(int8.parent / "tokenizer.json"))
    work = calls(args.shared, args.queries)
    py = {"python_ort_sorted_b16": scorer(int8, tok, args.threads, 16),
          "python_ort_sorted_b4": scorer(int8, tok, args.threads, 4, 2048)}
    for s in py.values():
        s(*work[0])  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        systems = {}
        for k, m in enumerate(args.models):
            systems[f"engine:{Path(m).name}"] = model_dir_of(m, args.shared, tmp, k)
        rates = collections.defaultdict(list)
        for r in range(args.rounds):
            # Rotate the order every round, so that a slow minute falls on each in turn.
            order = list(systems) + list(py)
            order = order[r % len(order):] + order[:r % len(order)]
            for name in order:
                if name in py:
                    rates[name].append(python_rate(py[name], work, args.cpu))
                else:
                    rates[name].append(engine(args.engine, *systems[name], args.threads, args.queries, args.cpu))
            base = rates["python_ort_sorted_b16"][-1]
            print(json.dumps({"round": r, **{k: round(v[-1], 1) for k, v in rates.items()},
                              **{f"{k} / b16": round(v[-1] / base, 3) for k, v in rates.items()}}), flush=True)
    summary = {}
    for k, v in rates.items():
        ratios = [x / b for x, b in zip(v, rates["python_ort_sorted_b16"])]
        summary[k] = {"pairs_per_s": v, "median_pairs_per_s": statistics.median(v),
                      "ratio_vs_python_b16_by_round": ratios, "ratio_vs_python_b16": statistics.median(ratios)}
        print(f"{k:60s} {statistics.median(v):7.1f} pairs/s  {statistics.median(ratios):.3f}x python b16 "
              f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})")
    if args.out:
        json.dump({"threads": args.threads, "metric": "pairs per CPU second" if args.cpu else "pairs/s", "queries": args.queries, "rounds": args.rounds, "systems": summary},
                  open(args.out, "w"), indent=1)


def variants(args):
    """The candidate int8 graphs of issue 13's levers, from the shared fp32 model.onnx, into
    OUT (quantize_dynamic with int8 weights, as model_int8.onnx was made):
      fused_qattention.onnx  transformer optimizer (bert: Attention, SkipLayerNormalization,
                             BiasGelu, EmbedLayerNormalization), then per-channel dynamic
                             quantization: QAttention, QEmbedLayerNormalization, MatMulInteger
      fused_fp32_attention.onnx  the same with Attention left fp32 (only MatMul and the
                             embeddings quantized)
      fused_fp32_embeddings.onnx the same with EmbedLayerNormalization left fp32
      per_tensor.onnx        unfused, one weight scale per tensor
      int8_attention.onnx    unfused, per-channel, the attention MatMuls (activation x
                             activation) quantized too (MatMulConstBOnly off)"""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    import onnx
    src = Path(args.shared) / "models" / "minilm-debian"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.load(open(src / "config.json"))
    fused = out / "fused_fp32.onnx"
    m = optimizer.optimize_model(str(src / "model.onnx"), model_type="bert", num_heads=cfg["num_attention_heads"],
                                 hidden_size=cfg["hidden_size"], opt_level=0)
    print("transformer optimizer:", {k: v for k, v in m.get_fused_operator_statistics().items() if v})
    m.save_model_to_file(str(fused))
    # The fused graph's contrib ops defeat shape inference: tell the quantizer the type.
    fp = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    q = dict(per_channel=True, weight_type=QuantType.QInt8)
    quantize_dynamic(fused, out / "fused_qattention.onnx", **q, extra_options=fp)
    quantize_dynamic(fused, out / "fused_fp32_attention.onnx", **q, extra_options=fp,
                     op_types_to_quantize=["MatMul", "Gather", "EmbedLayerNormalization"])
    quantize_dynamic(fused, out / "fused_fp32_embeddings.onnx", **q, extra_options=fp,
                     op_types_to_quantize=["MatMul", "Attention"])
    quantize_dynamic(src / "model.onnx", out / "per_tensor.onnx", per_channel=False, weight_type=QuantType.QInt8)
    quantize_dynamic(src / "model.onnx", out / "int8_attention.onnx", **q, extra_options={"MatMulConstBOnly": False})
    for f in sorted(out.glob("*.onnx")):
        ops = collections.Counter(n.op_type for n in onnx.load(f).graph.node)
        print(f.name, dict(ops.most_common(8)))


def quality(args):
    """NDCG@10 of each graph on the dev queries' reference candidates (the engine's CPU
    batches: sorted, 4 pairs, 2,048 tokens) and mean |logit - fp32 reference logit|."""
    data = Path(args.shared) / "data" / "debian"
    tok = Tokenizer.from_file(str(Path(args.shared) / "models" / "minilm-debian" / "tokenizer.json"))
    rel = devset.qrels(data)
    items = devset.reference_calls(data, args.queries)
    results = {}
    for m in args.models:
        score = scorer(m, tok, args.threads, 4, 2048)
        nd, diff = [], []
        for q, query, c, docs in items:
            s = score(query, docs)
            nd.append(devset.ndcg10([c[i][1] for i in np.argsort(-s, kind="stable")], rel.get(q, {})))
            diff.extend(np.abs(s - np.array([x for _, _, x in c])))
        results[Path(m).name] = {"ndcg10": float(np.mean(nd)), "mean_abs_logit_diff_fp32": float(np.mean(diff))}
        print(f"{Path(m).name:40s} NDCG@10 {np.mean(nd):.4f}  mean |logit - fp32| {np.mean(diff):.3f}", flush=True)
    if args.out:
        json.dump({"queries": args.queries, "results": results}, open(args.out, "w"), indent=1)


def settings(args):
    """Python onnxruntime session settings on one graph, in the engine's batches (sorted,
    4 pairs, 2,048 tokens), in rotating rounds: ORT_ENABLE_ALL (what the engine uses),
    ORT_ENABLE_EXTENDED, the graph ORT_ENABLE_ALL optimized and saved
    (optimized_model_filepath) loaded with ORT_DISABLE_ALL, intra-op spinning off, and
    session.dynamic_block_base 4. Reports pairs/s (per CPU second with --cpu) and each
    round's ratio to ORT_ENABLE_ALL."""
    tok = Tokenizer.from_file(str(Path(args.shared) / "models" / "minilm-debian" / "tokenizer.json"))
    batches = [f for _, f in (b for q, d in calls(args.shared, args.queries) for b in feeds(tok, q, d, 4, 2048))]
    pairs = sum(len(f["input_ids"]) for f in batches)
    clock = time.process_time if args.cpu else time.perf_counter
    level = ort.GraphOptimizationLevel

    def make(path=args.model, lvl=level.ORT_ENABLE_ALL, spin=True, block=None, save=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = lvl
        if save:
            so.optimized_model_filepath = save
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if block:
            so.add_session_config_entry("session.dynamic_block_base", str(block))
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as tmp:
        saved = str(Path(tmp) / "optimized.onnx")
        make(save=saved)
        configs = {"all": make(), "extended": make(lvl=level.ORT_ENABLE_EXTENDED),
                   "saved_optimized_disable_all": make(path=saved, lvl=level.ORT_DISABLE_ALL),
                   "all_no_spinning": make(spin=False), "all_dynamic_block_base_4": make(block=4)}
    configs = {k: v for k, v in configs.items() if not args.only or k in args.only.split(",") or k == "all"}
    rates = {k: [] for k in configs}
    for r in range(args.rounds):
        names = list(configs)
        for k in names[r % len(names):] + names[:r % len(names)]:
            configs[k].run(None, batches[0])
            t0 = clock()
            for f in batches:
                configs[k].run(None, f)
            rates[k].append(pairs / (clock() - t0))
    for k, v in rates.items():
        ratios = [x / b for x, b in zip(v, rates["all"])]
        print(f"{k:28s} {statistics.median(v):7.1f} pairs/s  {statistics.median(ratios):.3f}x all "
              f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile")
    p.add_argument("shared")
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out")
    c = sub.add_parser("compare")
    c.add_argument("shared")
    c.add_argument("engine")
    c.add_argument("models", nargs="+")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--queries", type=int, default=3)
    c.add_argument("--rounds", type=int, default=4)
    c.add_argument("--cpu", action="store_true",
                   help="pairs per CPU second instead of per second (for --threads 1 on a busy machine)")
    c.add_argument("--out")
    v = sub.add_parser("variants")
    v.add_argument("shared")
    v.add_argument("out_dir")
    g = sub.add_parser("quality")
    g.add_argument("shared")
    g.add_argument("models", nargs="+")
    g.add_argument("--queries", type=int, default=50)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--out")
    t = sub.add_parser("settings")
    t.add_argument("shared")
    t.add_argument("model")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--queries", type=int, default=3)
    t.add_argument("--rounds", type=int, default=4)
    t.add_argument("--cpu", action="store_true")
    t.add_argument("--only", help="comma-separated settings to run besides all")
    args = ap.parse_args()
    {"profile": profile, "compare": compare, "variants": variants, "quality": quality,
     "settings": settings}[args.cmd](args)


if __name__ == "__main__":
    main()
