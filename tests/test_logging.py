"""The library reports through the ``isnet`` logger: the ``isnet`` command shows its progress on stdout and its
warnings on stderr, one line each; used as a library it prints nothing unless the application configures logging."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import FAST_TRAIN, run_isnet


def test_isnet_train_prints_its_progress_on_stdout(toy_manifest, tmp_path):
    res = run_isnet(["train", "--manifest", str(toy_manifest), "--epochs", "2", *FAST_TRAIN], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()

    def first(pattern: str) -> int:
        found = [i for i, ln in enumerate(lines) if re.match(pattern, ln)]
        assert found, f"no line matching {pattern!r} in:\n{res.stdout}"
        return found[0]

    # the library's lines (logged) and the command's own (printed) arrive in order, each once
    order = [first(r"data cache: "),
             first(r"run [0-9a-f]{32} started; checkpoints in "),
             first(r"images per split and class:$"),
             first(r"epoch 1/2  train loss \d+\.\d{4} acc \d\.\d{3}  val loss \d+\.\d{4} acc \d\.\d{3} auc "),
             first(r"epoch 2/2  train loss "),
             first(r"finished run [0-9a-f]{32}: 2 epochs, best epoch [12] ")]
    assert order == sorted(order)
    assert res.stdout.count("epoch 1/2  train loss") == 1 and res.stdout.count(" started; checkpoints in ") == 1
    for text in ("data cache:", "started; checkpoints in", "epoch 1/2", "epoch 2/2"):
        assert text not in res.stderr


def test_the_collapse_warning_is_one_line_on_stderr_through_the_cli(toy_manifest, tmp_path):
    """P = 1 from the initial weights: nothing pulls the classifier away from chance while the background loss
    falls (clearly at lr 0.005: 1.44 -> 1.14 from epoch 1 to 2, CE 1.29), and the detector warns
    (tests/test_isnet_training.py, test_a_stalled_isnet_run_is_flagged_in_mlflow).
    The command shows that Python warning once, as one line without the source path or code line."""
    res = run_isnet(["train", "--manifest", str(toy_manifest), "--epochs", "3", *FAST_TRAIN, "--set", "methods=[isnet]",
                     "--set", "method.isnet.P=1.0", "--set", "method.isnet.warmup_epochs=1", "--lr", "0.005"],
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    [line] = [ln for ln in res.stderr.splitlines() if "possible collapse" in ln]
    assert line.startswith("warning: isnet: possible collapse at epoch ")
    assert line.endswith("(fine-tune a trained model; docs/notes/methods-log.md, 'ISNet from the initial weights').")
    # Python's own form would be a second line with "possible collapse" (".../isnet/methods/isnet.py:N:
    # RuntimeWarning: isnet: possible collapse ...") and the code line below it
    for noise in ("isnet/methods/isnet.py", "self._check_collapse("):
        assert noise not in res.stderr, res.stderr[-3000:]
    assert "possible collapse" not in res.stdout
    assert "epoch 3/3  train loss" in res.stdout  # the progress stays on stdout


def test_while_a_command_runs_a_warning_of_the_library_is_one_line_on_stderr(capsys):
    """In process (the detector fed by hand, as tests/test_isnet_training.py does): the command's logging set-up
    shows the collapse warning as `warning: <message>` on stderr, and puts everything back afterwards."""
    import logging
    import warnings
    from types import SimpleNamespace

    from isnet import cli
    from isnet.config import load_config
    from isnet.methods.isnet import ISNetMethod

    cfg = load_config(None, ["methods=[isnet]", "optim.epochs=9"])
    trainer = SimpleNamespace(cfg=cfg, tracker=SimpleNamespace(set_tags=lambda tags: None))
    method = ISNetMethod(cfg)
    logger, show = logging.getLogger("isnet"), warnings.showwarning
    before = (list(logger.handlers), logger.level, logger.propagate)
    with cli._command_logging():
        logging.getLogger("isnet.train.trainer").info("epoch 1/9  a progress line")
        for epoch, ce, l_bg in [(1, 1.09, 2.0), (2, 1.08, 1.5), (3, 1.07, 1.0), (4, 1.06, 0.5)]:
            method.on_epoch_end(epoch, {"train_ce": ce, "train_L_bg": l_bg}, trainer)
    out, err = capsys.readouterr()
    assert out == "epoch 1/9  a progress line\n"
    [line] = err.splitlines()
    assert line.startswith("warning: isnet: possible collapse at epoch 3: training cross-entropy 1.070 ")
    assert (list(logger.handlers), logger.level, logger.propagate) == before and warnings.showwarning is show


def test_the_library_prints_nothing_unless_logging_is_configured(tmp_path):
    script = (
        "import logging, sys, torch\n"
        "from isnet.train import checkpoint as ck\n"
        "torch.save({'epoch': 3}, 'old.pt')\n"  # no checksum: loaded with a warning
        "ck.load_checkpoint('old.pt')\n"
        "sys.stderr.write('--configured--\\n')\n"
        "logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')\n"
        "ck.load_checkpoint('old.pt')\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout == ""
    before, after = res.stderr.split("--configured--\n")
    assert before == ""
    assert after.startswith("WARNING isnet.train.checkpoint: warning: checkpoint old.pt carries no checksum")
    assert after.count("\n") == 1
