"""Multi-process ftp-train (torchrun, gloo, 2 CPU ranks) equals the single-process run.

GA fitness is sharded over ranks and gathered exactly; router gradients are computed per
fixed micro-batch on some rank and summed in micro-batch order on every rank, so the result
is bit-identical to one process for the same seed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_trainer import TINY_ARGS, _doc, text_file  # noqa: F401  (fixture re-used)

from ftp_export.schedule import load_schedule
from ftp_export_trainer.cli import main


def test_torchrun_two_ranks_equal_single(tiny_dir, text_file, tmp_path):  # noqa: F811
    single = tmp_path / "single" / "s.json"
    multi = tmp_path / "multi" / "s.json"
    common = ["--model", str(tiny_dir), "--data", str(text_file), *TINY_ARGS, "--no-eval", "--router-batch", "4"]
    assert main([*common, "-o", str(single)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ftp_export_trainer.cli", *common, "-o", str(multi)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    load_schedule(multi)
    a, b = _doc(single), _doc(multi)
    assert b["produced_by"].pop("world_size") == 2 and a["produced_by"].pop("world_size") == 1
    assert a == b
    assert Path(single.with_name("s.routers.safetensors")).read_bytes() == multi.with_name("s.routers.safetensors").read_bytes()
    report = json.loads(multi.with_name("s.report.json").read_text())
    assert report["world_size"] == 2 and report["ranks_agree"] is True
