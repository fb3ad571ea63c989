"""Run `llamafactory-cli train CONFIG` in this process and kill it in the middle of one checkpoint's save, as a
cluster's preemption (SIGTERM, SIGKILL) or a full disk / `ulimit -f` (EFBIG) does (preemption-safe resume tests).

Usage: python save_killer.py CONFIG STEP POINT HOW
  STEP   the checkpoint step whose save is interrupted (checkpoint-STEP)
  POINT  where in transformers' save order (weights + AttTok files, optimizer/scheduler, RNG, trainer_state.json):
         after-weights    save_model done (AttTok's files written), nothing else
         after-optimizer  optimizer.pt written, scheduler.pt not
         mid-state        half of trainer_state.json written
  HOW    SIGTERM | SIGKILL | EFBIG (an OSError(27) from the write, as `ulimit -f` gives)
"""

import errno
import os
import signal
import sys


def _die(how: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if how == "EFBIG":
        raise OSError(errno.EFBIG, "File too large")
    os.kill(os.getpid(), getattr(signal, how))


def install(step: int, point: str, how: str) -> None:
    """Patch transformers / torch so that the save of checkpoint-``step`` dies at ``point`` the way ``how`` says."""
    from transformers import Trainer, TrainerState

    def saving_step(trainer_or_state) -> bool:
        state = getattr(trainer_or_state, "state", trainer_or_state)
        return state.global_step == step

    if point == "after-weights":
        original = Trainer._save_optimizer_and_scheduler

        def save_optimizer(self, output_dir):
            if saving_step(self):
                _die(how)
            return original(self, output_dir)

        Trainer._save_optimizer_and_scheduler = save_optimizer
    elif point == "after-optimizer":
        import torch

        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            if str(f).endswith(f"checkpoint-{step}/scheduler.pt"):
                _die(how)
            return original_save(obj, f, *args, **kwargs)

        torch.save = save
    elif point == "mid-state":
        original_json = TrainerState.save_to_json

        def save_to_json(self, json_path):
            if saving_step(self) and f"checkpoint-{step}" in str(json_path):
                text = self.__class__.__name__  # any prefix: a truncated JSON document
                with open(json_path, "w", encoding="utf-8") as handle:
                    handle.write('{"global_step": ' + str(step) + ', "log_history": [' + f"/* {text} */")
                _die(how)
            return original_json(self, json_path)

        TrainerState.save_to_json = save_to_json
    else:
        raise SystemExit(f"unknown point {point}")


def main() -> None:
    config, step, point, how = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    install(step, point, how)
    from llamafactory.cli import main as cli_main

    sys.argv = ["llamafactory-cli", "train", config]
    cli_main()


if __name__ == "__main__":
    main()
