"""Sweeps: multirun over K, experiment configs, wandb (data parallelism: test_data_parallel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrt.config import validate_train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model=tiny_random",
    "reasoner.width=32",
    "stage.batch_size=2",
    "stage.max_steps=2",
    "stage.val_every_n_steps=2",
    "data.val.limit=2",
    "data.test.limit=2",
    "final_eval.enabled=false",
    "trainer.enable_progress_bar=false",
]
# Hub ids of the paper's bases (DESIGN.md section 4); experiment configs must name these.
PAPER_BASES = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "Qwen/Qwen3-1.7B",
    "Qwen/Qwen3-4B",
    "Qwen/Qwen3-8B",
}


@pytest.mark.slow
def test_multirun_over_k_and_sweep_summary(tmp_path: Path, run_script) -> None:
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py", "-m", *TINY, "reasoner.num_latents=2,4", f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2
    for job in runs:
        assert (job / "reasoner" / "final" / "config.json").is_file()
        assert (job / ".hydra" / "config.yaml").is_file()

    out = tmp_path / "eval"
    result = run_script(
        "evaluate.py",
        "model=tiny_random",
        f"sweep_dir={sweep}",
        "modes=[lrt]",
        "limit=2",
        "max_answer_tokens=2",
        f"output_dir={out}",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "sweep.md").read_text()
    assert "reasoner.num_latents" in table
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ")][1:]
    assert sorted(r[2].strip() for r in rows if r[4].strip() == "lrt") == ["2", "4"], table
    modes = ["lrt", "lrt", "lrt-blind", "lrt-blind", "lrt-swap", "lrt-swap"]
    assert sorted(r[4].strip() for r in rows) == modes, table
    assert (out / "sweep.png").is_file()


def test_every_experiment_config_composes(compose_train) -> None:
    names = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    assert "cpu_smoke" in names
    paper = [n for n in names if n.startswith("paper_") and n.count("_") > 1]
    assert len(paper) == 8, paper
    for name in names:
        cfg = compose_train(f"experiment={name}")
        validate_train(cfg)
        if name in paper:
            assert cfg.model.path in PAPER_BASES, (name, cfg.model.path)
            assert cfg.model.dtype == "bfloat16" and cfg.trainer.precision == "bf16-mixed"
            assert cfg.stage.name in name
            if cfg.stage.name == "sft":  # the paper's data, network and exploration
                assert cfg.data.task == "openr1_math" and cfg.reasoner.arch == "pretrained"
            else:
                assert cfg.data.task == "deepscaler" and cfg.stage.exploration == "answer"
                assert cfg.stage.batch_size * cfg.stage.num_generations == 1024


@pytest.mark.slow
def test_wandb_logger_runs_offline_and_a_resume_continues_its_run(
    tmp_path: Path, run_script
) -> None:
    run_dir = tmp_path / "wb"
    args = [*TINY, "reasoner.num_latents=2", "logger=wandb", f"hydra.run.dir={run_dir}"]
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    assert any(offline[0].glob("*.wandb"))
    result = run_script("train.py", *args, "stage.max_steps=3")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert all(r.name.endswith(f"-{run_id}") for r in runs), runs


def test_wandb_finds_a_wandb_login_without_an_api_key(tmp_path: Path) -> None:
    """`wandb login` writes ~/.netrc: such a user logs online though WANDB_API_KEY is unset.

    The check reads files only: it must answer at once on a machine without network and never
    import wandb (whose service process was seen to hang offline). It runs in a subprocess with
    a 10 s limit, so a hang fails here instead of stalling the suite."""
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    netrc.chmod(0o600)
    none = str(tmp_path / "none")
    settings = tmp_path / "wandb-config" / "settings"
    settings.parent.mkdir()
    other_host = "[default]\nbase_url = https://wandb.example.org\n"
    key_in_settings = f"[default]\napi_key = {'b' * 40}\n"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".netrc").write_text(netrc.read_text())
    # (environment, settings file or None, offline?)
    cases = [
        ({"NETRC": str(netrc)}, None, False),
        ({"NETRC": none}, None, True),
        ({"NETRC": str(netrc), "WANDB_MODE": "offline"}, None, True),
        ({"NETRC": none, "WANDB_API_KEY": "k" * 40}, None, False),
        # A login to another server (`wandb login --host`) counts for that server only.
        ({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"}, None, True),
        ({"NETRC": str(netrc)}, other_host, True),
        ({"NETRC": none}, key_in_settings, False),
        ({"HOME": str(tmp_path / "home")}, None, False),  # no NETRC: ~/.netrc is read
    ]
    code = """
import json, os, sys
from lrt.loggers import wandb_should_be_offline
base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
settings = sys.argv[1]
answers = []
for env, text in json.loads(sys.argv[2]):
    os.environ.clear()
    os.environ.update({**base, "HOME": sys.argv[3], "WANDB_CONFIG_DIR": os.path.dirname(settings)})
    os.environ.update(env)
    if text is None:
        if os.path.exists(settings):
            os.remove(settings)
    else:
        open(settings, "w").write(text)
    answers.append(wandb_should_be_offline())
print(json.dumps([answers, "wandb" in sys.modules]))
"""
    args = [str(settings), json.dumps([[env, text] for env, text, _ in cases]), str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    answers, imported = json.loads(result.stdout)
    assert answers == [offline for _, _, offline in cases]
    assert not imported, "the credential check imported wandb"
