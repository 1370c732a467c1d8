"""train.py end to end on the tiny model, and config errors raised before any model loads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_entry
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from lrt.backbone import tiny_tokenizer
from lrt.config import validate_train
from lrt.data.datamodule import LRTDataModule
from lrt.errors import ConfigError, DataError, NonFiniteLossError
from lrt.reasoner import Reasoner, ReasonerConfig, load_reasoner

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model=tiny_random",
    "reasoner.width=32",
    "reasoner.num_latents=4",
    "stage.batch_size=4",
    "stage.val_every_n_steps=3",
    "stage.checkpoint_every_n_steps=1",
    "data.val.limit=4",
    "data.test.limit=4",
    "data.max_answer_tokens=4",
    "trainer.enable_progress_bar=false",
]


def run_train(*overrides: str) -> subprocess.CompletedProcess:
    return run_entry("train.py", *overrides)


@pytest.mark.slow
def test_three_steps_write_checkpoint_and_reasoner(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train(*TINY, "stage.max_steps=3", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    final = load_reasoner(run_dir / "reasoner" / "final", "tiny-random-qwen3", 64)
    assert final.num_latents == 4
    assert (run_dir / "reasoner" / "best" / "model.safetensors").is_file()
    assert "lrt" in (run_dir / "final_eval.md").read_text()
    assert (run_dir / "logs" / "metrics.csv").read_text().startswith("epoch,step")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert not any(k.startswith("lm.base.") for k in ckpt["state_dict"]), "base weights saved"
    # Resuming (test_resume_by_run_folder_or_by_run_name) and refusing a checkpoint of another
    # base (test_reliability.py) are tested on their own.


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("reasoner.num_latents=0", "reasoner.num_latents=0 must be a positive integer"),
        ("data.task=sudoku", "data.task='sudoku' is not a known task"),
        (
            "data.train.path=/no/such/file.jsonl",
            "data.train.path=/no/such/file.jsonl does not exist",
        ),
        ("init_from=/no/such/reasoner", "init_from=/no/such/reasoner does not exist"),
        ("stage.max_steps=0", "stage.max_steps=0 must be positive"),
        ("model.source=ollama", "model.source='ollama' is not one of"),
        ("data.prompt.target=trace", "data.prompt.target='trace' is not one of"),
        ("stage.checkpoint_every_n_steps=0", "stage.checkpoint_every_n_steps=0 must be a posi"),
        ("stage.val_every_n_steps=0", "stage.val_every_n_steps=0 must be a positive integer"),
        (
            "+trainer.accumulate_grad_batches=2",
            "trainer.accumulate_grad_batches=2 is not supported: set stage.micro_batch_size",
        ),
        ("+trainer.gradient_clip_val=0.5", "set stage.max_grad_norm instead"),
        ("stage.micro_batch_size=4", "stage.batch_size=6 must be a multiple of stage.micro_bat"),
        ("+stage.foo=1", "unknown key 'stage.foo'"),
        ("stage.optim.lr=-1", "stage.optim.lr=-1.0 must be positive"),
        ("+foo=1", "unknown key 'foo'"),
        ("data.options.max_factor=1", "data.options.max_factor=1 must be an integer >= 2"),
    ],
)
def test_invalid_values_fail_before_loading(compose_train, override: str, message: str) -> None:
    cfg = compose_train(override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_train(cfg)


def test_unknown_group_option_is_named(compose_train) -> None:
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/gpt5'"):
        compose_train("model=gpt5")


EVAL_ONLY = {"aime24", "aime24_local", "amc23", "amc23_local", "svamp", "svamp_local"}


def test_every_shipped_config_composes(compose_train) -> None:
    for group, options in {
        "model": [p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")],
        "data": [p.stem for p in (ROOT / "conf" / "data").glob("*.yaml")],
    }.items():
        for option in options:
            cfg = compose_train(f"{group}={option}")
            if group == "data" and option in EVAL_ONLY:  # their only split is the test set
                with pytest.raises(ConfigError, match="is an evaluation-only task"):
                    validate_train(cfg)
            else:
                validate_train(cfg)


def test_every_model_takes_its_memory_keys_without_a_plus(compose_train) -> None:
    """`model.activation_checkpointing` and `model.attn_implementation` are keys of every
    model config, so the README's overrides work as written (Hydra refuses a key a config
    does not have unless it is given as `+key`)."""
    for path in (ROOT / "conf" / "model").glob("*.yaml"):
        cfg = compose_train(
            f"model={path.stem}",
            "model.activation_checkpointing=true",
            "model.attn_implementation=eager",
        )
        model = validate_train(cfg).model
        assert model.activation_checkpointing and model.attn_implementation == "eager"


@pytest.mark.parametrize(
    "data", ["gsm8k", "gsm8k_local", "math", "math_local", "openr1_math", "deepscaler"]
)
def test_validation_never_reads_the_test_split(compose_train, data: str) -> None:
    """No shipped config picks `reasoner/best` on test questions; pointing validation at the
    test split is refused, naming both keys, unless explicitly allowed."""
    cfg = compose_train(f"data={data}")
    assert cfg.data.val.from_train and "split" not in cfg.data.val
    with open_dict(cfg):
        test = cfg.data.test  # OpenR1 and DeepScaleR test on MATH-500: another task's split
        cfg.data.val = {
            "split": test.split,
            "path": test.path,
            "task": test.get("task"),
            "limit": 8,
        }
    with pytest.raises(ConfigError, match="data.val and data.test both read task"):
        validate_train(cfg)
    with open_dict(cfg):
        cfg.data.allow_val_on_test = True
    validate_train(cfg)


@pytest.mark.slow
def test_a_renamed_key_names_its_new_name(tmp_path: Path) -> None:
    for old, new in (
        ("final_eval.max_answer_tokens=8", "data.max_answer_tokens"),
        ("stage.val_max_answer_tokens=8", "data.max_answer_tokens"),
        ("stage.sigma_min=0.1", "stage.sigma_min_scale"),
    ):
        result = run_train("model=tiny_random", old, f"hydra.run.dir={tmp_path}")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == f"error: {old.split('=')[0]} is now {new}"


@pytest.mark.slow
def test_cli_error_is_one_line(tmp_path: Path) -> None:
    result = run_train("model=tiny_random", "reasoner.num_latents=-3", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: reasoner.num_latents=-3 must be a positive integer"
    )


@pytest.mark.slow
def test_loading_init_from_for_another_base_fails(tmp_path: Path) -> None:
    config = ReasonerConfig(
        num_latents=2, width=8, heads=2, base_model="other", base_hidden_size=64
    )
    Reasoner(config).save_pretrained(tmp_path / "r")
    result = run_train(
        "model=tiny_random",
        f"init_from={tmp_path / 'r'}",
        "stage.max_steps=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode != 0
    assert "was trained for base model 'other', not 'tiny-random-qwen3'" in result.stderr


@pytest.mark.slow
def test_resume_by_run_folder_or_by_run_name(tmp_path: Path, train_in_process) -> None:
    """`resume=<run folder>` re-composes the run's own overrides in its folder (later
    overrides win); the same `run_name=` lands in the same folder and resumes too; and a run
    resumed twice with a longer `stage.max_steps` ends with the reasoner of a straight run.

    Steps 2, 3 and 4 stay inside the 5-step warm-up, whose rates do not depend on max_steps,
    so the straight and the resumed runs follow the same learning-rate schedule.
    """
    common = [*TINY, "final_eval.enabled=false", "stage.val_every_n_steps=100"]
    named = [*common, f"paths.output_root={tmp_path}", "run_name=mine"]
    assert run_train(*named, "stage.max_steps=2").returncode == 0
    run_dir = tmp_path / "sft" / "arith" / "mine"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2

    result = run_train(*named, "stage.max_steps=3")  # the same run_name
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr

    result = run_train(f"resume={run_dir}", "stage.max_steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.model.name == "tiny-random-qwen3" and saved.stage.max_steps == 4
    assert [p.name for p in (tmp_path / "sft" / "arith").iterdir()] == ["mine"]

    straight = tmp_path / "straight"
    train_in_process(straight, *common, "stage.max_steps=4")
    a = load_reasoner(straight / "reasoner" / "final").state_dict()
    b = load_reasoner(run_dir / "reasoner" / "final").state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)

    result = run_train(f"resume={tmp_path / 'nothing'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: resume={tmp_path}")


def test_an_experiment_overrides_train_yaml_own_keys(compose_train) -> None:
    """Experiments compose after train.yaml's own keys (lightning-hydra-template's order), so
    the paper's SFT runs keep their final table without the expensive cot@256 row."""
    cfg = compose_train("experiment=paper_sft")
    assert list(cfg.final_eval.modes) == ["lrt", "direct", "nothink"]
    assert compose_train("experiment=stir_smollm2_arith").final_eval.enabled is False


@pytest.mark.parametrize(
    ("raised", "resumable"),
    [
        (RuntimeError("out of memory"), True),
        (NonFiniteLossError("loss is nan"), True),
        (DataError("train.jsonl:3: field 'answer' is missing"), False),
    ],
)
def test_a_stop_names_the_resume_command_only_when_resuming_helps(
    compose_train, train_script, monkeypatch, tmp_path: Path, raised: Exception, resumable: bool
) -> None:
    """A crash or a guard stop carries its run folder, which `train.py` turns into the command
    that resumes it; bad data does not, since resuming would fail the same way."""

    def fail(*_args: object) -> None:
        raise raised

    monkeypatch.setattr(train_script, "train_reasoner", fail)
    cfg = compose_train("model=tiny_random", f"run_dir={tmp_path / 'run'}")
    with pytest.raises(type(raised)) as caught:
        train_script.run(cfg)
    assert (getattr(caught.value, "run_dir", None) == tmp_path / "run") is resumable


def test_a_copy_of_the_test_file_cannot_choose_checkpoints(compose_train, tmp_path: Path) -> None:
    """Validation is compared with test by question text, not by file: a renamed copy of
    GSM8K test, one question re-cased and re-wrapped, among training questions, is refused
    (the file check above lets it through), and allowed only when asked for."""
    data_dir = Path(compose_train().paths.data_dir)
    test_rows = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:3]
    train_rows = (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()[:5]
    edited = json.loads(test_rows[0])
    edited["question"] = "  " + edited["question"].upper().replace(" ", "\n ", 3)
    copy = tmp_path / "my_val.jsonl"
    copy.write_text("\n".join([*train_rows, json.dumps(edited), *test_rows[1:]]) + "\n")
    cfg = compose_train("data=gsm8k_local")
    with open_dict(cfg):
        cfg.data.val = {"split": "test", "path": str(copy)}
    config = validate_train(cfg)  # a different file: the identity check passes
    with pytest.raises(ConfigError, match=r"data.val \(.*my_val.jsonl\) holds 3 of the test"):
        LRTDataModule(config.data, tiny_tokenizer(), None, 2).setup()
    config.data.allow_val_on_test = True
    data = LRTDataModule(config.data, tiny_tokenizer(), None, 2)
    data.setup()
    assert len(data.val_records) == 8
