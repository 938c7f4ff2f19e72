"""conf/ ships inside the wheel and is found from an installed package, not only a checkout."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_conf_and_installed_package_finds_it(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(wheels)], check=True, capture_output=True)
    (wheel,) = wheels.glob("qdnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "qdnn_cli/conf/config.yaml" in names and "qdnn_cli/conf/experiment/cifar100.yaml" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = ("from qdnn_cli.config import conf_dir, compose; d = conf_dir(); "
             "cfg = compose('cifar100', ['trainer.epochs=3']); print(d); print(cfg.model.name, cfg.trainer.epochs)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    conf_line, cfg_line = out.stdout.strip().splitlines()
    assert conf_line.startswith(str(target)) and cfg_line == "resnet20 3"
