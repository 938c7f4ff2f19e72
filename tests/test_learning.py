"""Real learning on real data: scikit-learn's handwritten digits (the offline quickstart)."""
import json

import pytest

from conftest import SHARED_DATA
from helpers import qdnn, read_csv

CHANCE = 10.0


def test_quickstart_learns_in_every_mode(tmp_path):
    out = tmp_path / "run"
    r = qdnn("train", "quickstart", "trainer.epochs=8", "trainer.device=cpu", "trainer.progress=false", f"out_dir={out}")
    assert r.exit_code == 0, r.output
    top1 = {int(x["mode"]): float(x["top1"]) for x in read_csv(out / "results.csv")}
    assert set(top1) == {2, 3, 4, 8, 32}
    # every mode far above chance (10 classes)
    assert all(v > 6 * CHANCE for v in top1.values()), top1
    # expected ranking, within a tolerance of 3 points: more bits never clearly worse,
    # and 8-bit within 2 points of full precision
    order = [2, 3, 4, 8, 32]
    for lo, hi in zip(order, order[1:]):
        assert top1[hi] >= top1[lo] - 3.0, (lo, hi, top1)
    assert abs(top1[8] - top1[32]) <= 2.0, top1


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data/cifar100-dev is not present")
def test_real_cifar100_dev_folder_trains(tmp_path):
    """The real CIFAR-100 PNG tree through the folder path: 100 classes, 32 px, a short run."""
    out = tmp_path / "run"
    r = qdnn("train", "cifar100", "data=folder", f"data.root={SHARED_DATA}", "data.train_fraction=0.04",
             "model=tiny", "model.kwargs.width=8", "quant.bits=[2,32]", "trainer.epochs=1", "trainer.device=cpu",
             "trainer.progress=false", "trainer.max_steps_per_epoch=2", f"out_dir={out}")
    assert r.exit_code == 0, r.output
    info = json.loads((out / "data_info.json").read_text())
    # a stratified 4 % of each class folder, whatever size the shared tree has
    per_class = [len(list(c.iterdir())) for c in (SHARED_DATA / "train").iterdir()]
    num_val = sum(len(list(c.iterdir())) for c in (SHARED_DATA / "val").iterdir())
    assert info == {"num_classes": 100, "in_channels": 3, "image_size": 32,
                    "num_train": sum(round(0.04 * n) for n in per_class), "num_val": num_val}
    assert {x["mode"] for x in read_csv(out / "results.csv")} == {"2", "32"}
