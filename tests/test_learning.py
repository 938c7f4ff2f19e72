"""Real learning on real data: scikit-learn's handwritten digits (the offline quickstart)."""
from conftest import SHARED_DATA  # noqa: F401
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
