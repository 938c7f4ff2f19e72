import itertools, numpy as np, torch, onnx, onnxruntime as ort
from pathlib import Path
from qdnn_cli.loaded_run import load_checkpoint_model
from qdnn_cli.data import build_data
from qdnn_cli.quant.mixed import apply_bits
from qdnn_cli.export.graph import GraphBuilder
from qdnn_cli.export.lower import lower_model, output_ranges, simulated_qdq
from qdnn_cli.export import runtimes
from qdnn_cli.export.command import _validation_slice, _predict
ck = Path("runs/converge10_xeon/fp_start16_lr001_bf16/seed0/full/checkpoint.pt")
run = load_checkpoint_model(ck, {3}, [], "cpu", None)
model, cfg = run.model, run.cfg
t = cfg.trainer
data = build_data(cfg.data, int(t.batch_size), int(t.eval_batch_size), torch.device("cpu"), int(cfg.seed))
images, labels = _validation_slice(data.val, 200, data.num_val)
model.eval(); apply_bits(model, 3)
g = GraphBuilder("dbg", "qdq")
ranges = output_ranges(model, [x.float() for x, _ in itertools.islice(data.train, 4)])
logits_name, lowering = lower_model(model, g, "images", ranges)
m = g.model("images", tuple(images.shape[1:]), logits_name, data.num_classes, "dbg")
onnx.save(m, "/tmp/dbg3.onnx")
with simulated_qdq(lowering):
    ours = _predict(model.double(), images.double())
model.float()
def err(a, b):
    rng = a.max(1) - a.min(1)
    return np.median(np.abs(a - b).max(1) / rng), (a.argmax(1) == b.argmax(1)).mean()
ortl = runtimes.load("onnxruntime", Path("/tmp/dbg3.onnx"), 1)(images.numpy())
ovl = runtimes.load("openvino", Path("/tmp/dbg3.onnx"), 1)(images.numpy())
print("ORT vs qdnn", err(ours, ortl)); print("OV vs qdnn", err(ours, ovl)); print("ORT vs OV", err(ovl, ortl))
# disable ORT optimizations: reference QDQ semantics without fusion
so = runtimes.ort_options(1); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession("/tmp/dbg3.onnx", so, providers=["CPUExecutionProvider"])
raw = s.run(None, {"images": images.numpy()})[0]
print("ORT-unoptimised vs qdnn", err(ours, raw)); print("ORT-unopt vs ORT", err(raw, ortl))
for lvl in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_LAYOUT", "ORT_ENABLE_ALL"):
    if not hasattr(ort.GraphOptimizationLevel, lvl): print(lvl, "n/a"); continue
    so = runtimes.ort_options(1); so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, lvl)
    s = ort.InferenceSession("/tmp/dbg3.onnx", so, providers=["CPUExecutionProvider"])
    print(lvl, err(ours, s.run(None, {"images": images.numpy()})[0]))
