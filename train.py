"""Train a reasoner: `python train.py [stage=sft|grpo|grpo_cot] [model=...] [data=...] [k=v ...]`.

Hydra composes `conf/train.yaml`; `lrt.train.run` does the rest (see its docstring).
`python train.py resume=<run folder>` continues a run. Bad input stops with one line,
`error: <message>`, and exit status 1; every stop prints the command that resumes the run.
"""

from __future__ import annotations

import logging
import sys

import hydra
import torch.distributed as dist
from omegaconf import DictConfig

from lrt.errors import LrtError
from lrt.train import Stopped, refuse_renamed, resume_argv, resume_command, run

log = logging.getLogger("lrt.train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
        if dist.is_available() and dist.is_initialized():
            # Tear the process group down before exit: left to the interpreter's shutdown,
            # gloo's threads can abort the process ("terminate called ...") after a good run.
            dist.destroy_process_group()
    except LrtError as err:
        hint = getattr(err, "run_dir", None)
        message = f"{err}; resume with: {resume_command(hint)}" if hint else str(err)
        log.error("%s", message)
        sys.exit(f"error: {message}")
    except Stopped as stop:
        log.warning("%s", stop)
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except Exception as err:  # a crash: the traceback follows, and how to continue
        if getattr(err, "run_dir", None):
            print(f"crashed; resume with: {resume_command(err.run_dir)}", file=sys.stderr)
        raise


if __name__ == "__main__":
    refuse_renamed(sys.argv[1:])
    sys.argv = [sys.argv[0], *resume_argv(sys.argv[1:])]
    main()
