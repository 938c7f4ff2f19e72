import numpy as np, torch, onnxruntime as ort, itertools
exec(open("experiments/export/raw/xeon-vnni-3bit-ort-levels.py").read().split("ortl = ")[0])
from qdnn_cli.export import runtimes
for name in ["QDQSelectorActionTransformer", "DoubleQDQPairsRemover", "QDQFinalCleanupTransformer", "ClipQuantFusion",
             "QDQPropagationTransformer", "QDQS8ToU8Transformer", "ReluQuantFusion", "EnsureUniqueDQForNodeUnit"]:
    try:
        s = ort.InferenceSession("/tmp/dbg3.onnx", runtimes.ort_options(1), providers=["CPUExecutionProvider"], disabled_optimizers=[name])
        print(name, err(ours, s.run(None, {"images": images.numpy()})[0]))
    except Exception as e:
        print(name, "error", str(e)[:100])
